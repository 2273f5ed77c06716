"""Loader images/s on ImageNet-style data: a JPEG beton + FFCV's random-resized-crop decoder +
`CompensateFFCV`, against a torchvision ImageFolder loader with the same augmentations (issue 16, item 5).

    python benchmarks/large_images.py [--images 2000] [--source-size 256] [--sizes 64,128,224] [--rounds 2]

Source: the embedded CIFAR-10 sample upscaled (bicubic) to ``--source-size`` and saved as JPEG files
(quality 90) in an ImageFolder layout, and the same images in a beton written with
``write_mode="jpg"`` (quality 90). Per output size, both loaders do: random resized crop to
size x size, horizontal flip, corruption compensation (the default recipe's), uint8 -> float.
FFCV: ``RandomResizedCropRGBImageDecoder`` -> ``RandomHorizontalFlip`` -> ``CompensateFFCV`` ->
``ToTensor`` -> ``ToTorchImage``; torchvision: ``ImageFolder`` -> ``v2.RandomResizedCrop`` ->
``v2.RandomHorizontalFlip`` -> ``v2.PILToTensor`` -> `CorruptionCompensation`, in a DataLoader.
Batch 64, ``--workers`` each; one warm-up epoch, then ``--rounds`` epochs each, alternating.
Results: ``benchmarks/results/large-images-<date>.json``, rewritten after every size.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def make_sources(root: Path, count: int, side: int) -> tuple[Path, Path]:
    import PIL.Image

    from eclipse_loader.data.embedded import load_embedded
    from eclipse_loader.data.images import LabelledImages
    from eclipse_loader.storage.beton import write_beton

    sample = load_embedded("train")
    reps = -(-count // len(sample))
    small = np.tile(sample.images, (reps, 1, 1, 1))[:count]
    labels = np.tile(sample.labels, reps)[:count]
    large = np.stack([np.asarray(PIL.Image.fromarray(im).resize((side, side), PIL.Image.BICUBIC)) for im in small])
    folder = root / "folder"
    for k, (image, label) in enumerate(zip(large, labels)):
        (folder / f"class_{label}").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(folder / f"class_{label}" / f"{k:06d}.jpg", quality=90)
    beton = write_beton(root / "large.beton", LabelledImages(large, labels, 10), write_mode="jpg", jpeg_quality=90,
                        progress=False)
    return folder, beton


def ffcv_loader(beton: Path, size: int, batch: int, workers: int):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, ToTensor, ToTorchImage

    from eclipse_loader import CompensateFFCV

    compensation = CompensateFFCV(seed=0)
    pipelines = {"image": [RandomResizedCropRGBImageDecoder((size, size)), RandomHorizontalFlip(), compensation,
                           ToTensor(), ToTorchImage()],
                 "label": [IntDecoder(), ToTensor()]}
    return Loader(str(beton), batch_size=batch, num_workers=workers, order=OrderOption.RANDOM, drop_last=False,
                  pipelines=pipelines, seed=0)


def torchvision_loader(folder: Path, size: int, batch: int, workers: int):
    import torch
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    from eclipse_loader import CorruptionCompensation

    transform = v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), v2.PILToTensor(),
                            CorruptionCompensation(seed=0)])
    return torch.utils.data.DataLoader(ImageFolder(str(folder), transform=transform), batch_size=batch, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0)


def epoch_seconds(loader) -> tuple[float, int]:
    start, seen = time.perf_counter(), 0
    for images, _ in loader:
        images.float()  # the uint8 -> float step both pipelines end with
        seen += len(images)
    return time.perf_counter() - start, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--sizes", default="64,128,224")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(RESULTS / f"large-images-{datetime.date.today()}.json"))
    args = parser.parse_args()
    report = {"command": "python benchmarks/large_images.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": "2-core CPU, no GPU", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder, beton = make_sources(Path(tmp), args.images, args.source_size)
        report["beton_mib"] = round(beton.stat().st_size / 2**20, 1)
        for size in (int(v) for v in args.sizes.split(",")):
            loaders = {"ffcv_jpeg_rrc_compensation": ffcv_loader(beton, size, args.batch, args.workers),
                       "torchvision_imagefolder": torchvision_loader(folder, size, args.batch, args.workers)}
            for loader in loaders.values():
                epoch_seconds(loader)  # warm-up: JIT compilation, worker start
            rates: dict[str, list[float]] = {name: [] for name in loaders}
            for k in range(args.rounds):
                for name in (list(loaders) if k % 2 == 0 else list(loaders)[::-1]):
                    seconds, seen = epoch_seconds(loaders[name])
                    rates[name].append(seen / seconds)
            ratios = [f / t for f, t in zip(rates["ffcv_jpeg_rrc_compensation"], rates["torchvision_imagefolder"])]
            report["runs"].append({"size": size, **{f"{n}_img_per_s": [round(r, 1) for r in v] for n, v in rates.items()},
                                   "ffcv_over_torchvision_per_round": [round(r, 2) for r in ratios],
                                   "ffcv_over_torchvision_median": round(statistics.median(ratios), 2)})
            print(json.dumps(report["runs"][-1]), flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""Loader throughput: FFCV vs the torch fallback, with and without the compensation.

Writes CIFAR-10's training set (50,000 images) to a beton once, then times full epochs of each
loader configuration, excluding the first (JIT-compiling) epoch, and appends one JSON line per
configuration to benchmarks/results/loader_speed.jsonl. Timing claims are ratios within one run.

    .venv/bin/python benchmarks/bench_loader.py [--samples 50000] [--epochs 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, append_jsonl, command_line, load_cifar, machine_info, time_epochs  # noqa: E402

from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader  # noqa: E402
from eclipse_loader.data.images import as_labelled_images  # noqa: E402
from eclipse_loader.loading.config import AugmentConfig  # noqa: E402
from eclipse_loader.loading.torch_loader import TorchEpochLoader  # noqa: E402
from eclipse_loader.storage.beton import write_beton  # noqa: E402

OUT = RESULTS / "loader_speed.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    data = as_labelled_images(*load_cifar(args.samples), 10)
    configs = {
        "no augmentation": None,
        "flip+translate": AugmentConfig(compensate=False),
        "flip+translate+compensation": AugmentConfig(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        beton = write_beton(Path(tmp) / "train.beton", data, progress=False)
        for name, augment in configs.items():
            for backend in ("ffcv", "torch"):
                if backend == "ffcv":
                    loader = make_ffcv_loader(beton, args.batch_size, augment=augment, shuffle=True, drop_last=True)
                else:
                    loader = TorchEpochLoader(data, args.batch_size, augment=augment, shuffle=True, drop_last=True)
                rate = time_epochs(loader, args.epochs)
                loader.close()
                row = {
                    "benchmark": "loader_speed", "backend": backend, "pipeline": name, "images_per_s": round(rate, 1),
                    "samples": args.samples, "batch_size": args.batch_size, "epochs_timed": args.epochs,
                    "machine": machine_info(), "command": command_line(),
                }
                append_jsonl(Path(args.out), row)


if __name__ == "__main__":
    main()

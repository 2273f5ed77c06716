"""Purification images/s against the bare U-Net forward at the same batch, measured in one run.

    python benchmarks/purify_speed.py [--device cuda] [--presets tiny,small] [--batch 256] [--rounds 3]

Each round times, in alternating order, (a) the U-Net alone, called once per reverse step on a
fixed batch, and (b) `Purifier.purify` on the same uint8 batch (outlier repair, noise draws,
reverse steps, conversion back to uint8). The ratio (a)/(b) per round is reported with its median;
the issue's targets: >= 0.9 on the CPU, >= 0.5 on a GPU. Results go to
``benchmarks/results/purify-speed-<date>-<device>.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser import build_scheduler, build_unet
from eclipse_loader.purify.purifier import Purifier, PurifyConfig, to_model_range

RESULTS = Path(__file__).resolve().parent / "results"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(preset: str, batch: int, rounds: int, device: torch.device, noise_rng: str) -> dict:
    images = np.resize(load_embedded("train").images, (batch, 32, 32, 3))
    torch.manual_seed(0)
    purifier = Purifier(build_unet(preset), build_scheduler(), PurifyConfig(noise_rng=noise_rng), device=device)
    x = to_model_range(images).to(device)
    t = torch.full((batch,), purifier.timesteps[0], dtype=torch.long, device=device)

    @torch.no_grad()
    def bare() -> None:
        for _ in purifier.timesteps:
            purifier.unet(x, t)

    def purify() -> None:
        purifier.purify(images, range(batch))

    timings: dict[str, list[float]] = {"bare_unet": [], "purify": []}
    for fn in (bare, purify):  # warm-up
        fn()
    for k in range(rounds):
        order = [("bare_unet", bare), ("purify", purify)][:: 1 if k % 2 == 0 else -1]
        for name, fn in order:
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            timings[name].append(time.perf_counter() - start)
    ratios = [b / p for b, p in zip(timings["bare_unet"], timings["purify"])]
    return {
        "preset": preset, "batch": batch, "steps": len(purifier.timesteps), "noise_rng": noise_rng,
        "bare_unet_img_per_s": [round(batch / s, 1) for s in timings["bare_unet"]],
        "purify_img_per_s": [round(batch / s, 1) for s in timings["purify"]],
        "ratio_per_round": [round(r, 3) for r in ratios], "ratio_median": round(statistics.median(ratios), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--noise-rngs", default="counter,generator")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    out = Path(args.out) if args.out else RESULTS / f"purify-speed-{datetime.date.today()}-{device.type}.json"
    result = {"command": "python benchmarks/purify_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "device": name, "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "runs": []}
    for preset in args.presets.split(","):
        for rng in args.noise_rngs.split(","):
            result["runs"].append(measure(preset, args.batch, args.rounds, device, rng))
            print(json.dumps(result["runs"][-1]), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))  # saved after every configuration
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

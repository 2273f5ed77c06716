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
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _common import device_report, sync
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser import build_scheduler, build_unet
from eclipse_loader.purify.outliers import repair_isolated_pixels
from eclipse_loader.purify.purifier import Purifier, PurifyConfig, to_model_range, to_uint8

RESULTS = Path(__file__).resolve().parent / "results"


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
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            timings[name].append(time.perf_counter() - start)
    ratios = [b / p for b, p in zip(timings["bare_unet"], timings["purify"])]
    return {"stage_ms_per_batch": stage_times(purifier, images, x, device), **{
        "preset": preset, "batch": batch, "steps": len(purifier.timesteps), "noise_rng": noise_rng,
        "bare_unet_img_per_s": [round(batch / s, 1) for s in timings["bare_unet"]],
        "purify_img_per_s": [round(batch / s, 1) for s in timings["purify"]],
        "ratio_per_round": [round(r, 3) for r in ratios], "ratio_median": round(statistics.median(ratios), 3),
    }}


@torch.no_grad()
def stage_times(purifier: Purifier, images: np.ndarray, x: torch.Tensor, device: torch.device,
                calls: int = 10) -> dict[str, float]:
    """Milliseconds per batch of each stage of `Purifier.purify` besides the U-Net, each timed alone
    (median of ``calls``): where the gap between purify and the bare U-Net goes."""
    t = torch.full((len(x),), purifier.timesteps[0], dtype=torch.long, device=device)
    eps, z = purifier.unet(x, t).sample, torch.randn_like(x)
    draw = purifier._noise_source(range(len(x)), tuple(x.shape[1:]))
    t_prev = purifier.timesteps[1] if len(purifier.timesteps) > 1 else -1
    stages = {
        "unet_call": lambda: purifier.unet(x, t),
        "outlier_repair": lambda: repair_isolated_pixels(images, purifier.config.repair_threshold or 48),
        "to_model_range": lambda: to_model_range(images).to(device),
        "noise_draw": draw,
        "reverse_update": lambda: purifier.step(x, eps, purifier.timesteps[0], t_prev, z),
        "finite_check_and_to_uint8": lambda: (int((~torch.isfinite(x)).flatten(1).any(1).sum()), to_uint8(x)),
    }
    result = {}
    for name, stage in stages.items():
        stage()
        spent = []
        for _ in range(calls):
            sync(device)
            start = time.perf_counter()
            stage()
            sync(device)
            spent.append(time.perf_counter() - start)
        result[name] = round(1e3 * statistics.median(spent), 2)
    return result


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
    out = Path(args.out) if args.out else RESULTS / f"purify-speed-{datetime.date.today()}-{device.type}.json"
    result = device_report("purify_speed.py", args, device)
    for preset in args.presets.split(","):
        for rng in args.noise_rngs.split(","):
            result["runs"].append(measure(preset, args.batch, args.rounds, device, rng))
            print(json.dumps(result["runs"][-1]), flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2))  # saved after every configuration
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

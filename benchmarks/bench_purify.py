"""Purification throughput (images/s) per preset and step count on this machine.

Weights are random (speed does not depend on them). Each configuration purifies --images images
in batches of --batch-size after one warm-up batch; results are appended to
benchmarks/results/purify_speed.jsonl as they are measured.

    python benchmarks/bench_purify.py --presets small,paper --images 16 --batch-size 16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, append_jsonl, command_line, machine_info, time_purification  # noqa: E402

from eclipse_loader.denoiser.presets import build_scheduler, build_unet  # noqa: E402
from eclipse_loader.purify.purifier import Purifier, PurifyConfig  # noqa: E402

MODES = {
    "ddpm_full": dict(sampler="ddpm", steps=None),
    "ddpm_strided_20": dict(sampler="ddpm", steps=20),
    "ddim_10": dict(sampler="ddim", steps=10),
    "ddpm_strided_2": dict(sampler="ddpm", steps=2),  # the demo's setting
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="small,paper")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "purify_speed.jsonl"))
    args = parser.parse_args()
    images = np.random.default_rng(0).integers(0, 256, (args.images, 32, 32, 3), dtype=np.uint8)
    for preset in args.presets.split(","):
        torch.manual_seed(0)
        unet = build_unet(preset)
        for mode in args.modes.split(","):
            config = PurifyConfig(bf16=args.bf16, **MODES[mode])
            purifier = Purifier(unet, build_scheduler(), config, device=args.device)
            _, seconds = time_purification(purifier, images, args.batch_size)
            append_jsonl(Path(args.out), {
                "bench": "purify_speed", "command": command_line(), "machine": machine_info(), "device": args.device,
                "preset": preset, "mode": mode, "t_star": purifier.t_star, "network_calls": len(purifier.timesteps),
                "images": args.images, "batch_size": args.batch_size, "bf16": args.bf16, "seconds": round(seconds, 3),
                "images_per_s": round(args.images / seconds, 4),
                "hours_for_50k_cifar": round(50000 / (args.images / seconds) / 3600, 2),
            })


if __name__ == "__main__":
    main()

"""The ``purify_speed`` stage (formerly ``bench_purify.py``): purification images/s per preset and
sampler/step count.

Weights are random (speed does not depend on them). Each configuration purifies
``--purify-speed-images`` images in batches of ``--purify-speed-batch-size`` after one warm-up batch;
results are appended to ``--purify-speed-out`` (default benchmarks/results/purify_speed.jsonl) as they
are measured.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, append_jsonl, command_line, machine_info, time_purification

MODES = {
    "ddpm_full": dict(sampler="ddpm", steps=None),
    "ddpm_strided_20": dict(sampler="ddpm", steps=20),
    "ddim_10": dict(sampler="ddim", steps=10),
    "ddpm_strided_2": dict(sampler="ddpm", steps=2),  # the demo's setting
}


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("purify_speed stage (formerly bench_purify.py's options, prefixed)")
    group.add_argument("--purify-speed-presets", default="small,paper")
    group.add_argument("--purify-speed-modes", default=",".join(MODES))
    group.add_argument("--purify-speed-images", type=int, default=16)
    group.add_argument("--purify-speed-batch-size", type=int, default=16)
    group.add_argument("--purify-speed-device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--purify-speed-bf16", action="store_true")
    group.add_argument("--purify-speed-out", default=str(RESULTS / "purify_speed.jsonl"))


def run(args: argparse.Namespace) -> None:
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig

    count, batch, device, bf16 = (args.purify_speed_images, args.purify_speed_batch_size, args.purify_speed_device,
                                  args.purify_speed_bf16)
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    for preset in args.purify_speed_presets.split(","):
        torch.manual_seed(0)
        unet = build_unet(preset)
        for mode in args.purify_speed_modes.split(","):
            config = PurifyConfig(bf16=bf16, **MODES[mode])
            purifier = Purifier(unet, build_scheduler(), config, device=device)
            _, seconds = time_purification(purifier, images, batch)
            append_jsonl(Path(args.purify_speed_out), {
                "bench": "purify_speed", "command": command_line(), "machine": machine_info(), "device": device,
                "preset": preset, "mode": mode, "t_star": purifier.t_star, "network_calls": len(purifier.timesteps),
                "images": count, "batch_size": batch, "bf16": bf16, "seconds": round(seconds, 3),
                "images_per_s": round(count / seconds, 4),
                "hours_for_50k_cifar": round(50000 / (count / seconds) / 3600, 2),
            })

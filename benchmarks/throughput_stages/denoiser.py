"""The ``purify`` and ``train`` stages: purification images/s and denoiser training s/step per preset."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any, Optional

import numpy as np
import torch

from _common import load_cifar, machine_info, time_purification

def purify_rate(preset: str, steps: Optional[int], batch: int, max_images: int, budget_s: float, device: str, bf16: bool) -> dict[str, Any]:
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig

    torch.manual_seed(0)
    unet = build_unet(preset)
    purifier = Purifier(unet, build_scheduler(), PurifyConfig(steps=steps, bf16=bf16), device=device)
    images, _ = load_cifar(max_images)
    done, seconds = time_purification(purifier, images, batch, budget_s)
    return {
        "preset": preset, "steps": steps or "full", "network_calls": len(purifier.timesteps), "t_star": purifier.t_star,
        "sampler": "ddpm", "device": device, "device_name": _device_name(device), "bf16": bf16, "batch_size": batch,
        "images": done, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 3),
        "parameters_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
    }


def train_step_time(preset: str, steps: int, batch: int, device: str, sparse: int) -> dict[str, Any]:
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.denoiser import training

    step_ends: list[float] = []
    original = training.DenoiserModule.on_train_batch_end

    def timed(self: Any, *args: Any) -> None:  # this child process only: record when each step ends
        original(self, *args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        step_ends.append(time.perf_counter())

    training.DenoiserModule.on_train_batch_end = timed
    images, labels = load_cifar(sparse)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        training.train_denoiser(as_labelled_images(images, labels, 10), preset, tmp, max_steps=steps, batch_size=batch,
                                t_max=99, accelerator="gpu" if device.startswith("cuda") else "cpu", progress=False)
        wall = time.perf_counter() - start
    per_step = np.diff(step_ends)  # step k's duration, k >= 2 (the first includes Lightning's set-up)
    return {
        "preset": preset, "device": device, "device_name": _device_name(device), "batch_size": batch, "steps": steps,
        "seconds_per_step_median": round(float(np.median(per_step)), 4),
        "seconds_per_step_all": [round(float(s), 4) for s in per_step],
        "first_step_seconds_incl_setup": round(step_ends[0] - start, 3),
        "wall_seconds_incl_setup_and_save": round(wall, 2), "t_max": 99, "train_images": sparse,
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{machine_info()['cpu']} ({len(os.sched_getaffinity(0))} cores)"


def parse_per_preset(text: str, cast: Any) -> dict[str, Any]:
    """``"tiny=2,10;small=1,2"`` style, or ``"small=20,paper=5"`` (one value each)."""
    out: dict[str, Any] = {}
    for part in text.replace(";", " ").split():
        name, _, values = part.partition("=")
        out[name] = [cast(v) for v in values.split(",") if v]
    return out


def parse_per_preset_single(text: str, cast: Any) -> dict[str, Any]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name] = cast(value)
    return out


def steps_value(text: str) -> Optional[int]:
    return None if text == "full" else int(text)

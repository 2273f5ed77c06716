"""The ``scaling`` stage: `purify_dataset` and `write_beton` against the dataset size, with a linear fit."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import load_cifar

from .loaders import write_cifar_beton

def make_random_denoiser(preset: str, out_dir: str) -> dict[str, Any]:
    from eclipse_loader.denoiser.io import save_denoiser
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet

    torch.manual_seed(0)
    save_denoiser(build_unet(preset), build_scheduler(), out_dir, {"preset": preset, "weights": "random (benchmark)"})
    return {}


def scale_purify(n: int, denoiser_dir: str, workdir: str, steps: int, batch: int, device: str) -> dict[str, Any]:
    """``purify_dataset`` end to end on ``n`` images; its ``write_beton`` call is timed separately."""
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.purify import run
    from eclipse_loader.purify.purifier import PurifyConfig

    write_seconds: list[float] = []
    original = run.write_beton

    def timed_write(*args: Any, **kwargs: Any) -> Any:  # this child process only
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            write_seconds.append(time.perf_counter() - start)

    run.write_beton = timed_write
    images, labels = load_cifar(n)
    data = as_labelled_images(images, labels, 10)
    out = Path(workdir) / f"purified_{n}.beton"
    start = time.perf_counter()
    run.purify_dataset(data, denoiser_dir, out, config=PurifyConfig(steps=steps), batch_size=batch, device=device,
                       progress=False, work_dir=Path(workdir) / f"work_{n}")
    total = time.perf_counter() - start
    size = out.stat().st_size
    out.unlink()
    return {"images": n, "seconds_total": round(total, 2), "seconds_write_beton": round(sum(write_seconds), 2),
            "seconds_purify": round(total - sum(write_seconds), 2), "beton_bytes": size, "steps": steps, "batch_size": batch,
            "device": device, "images_per_s_purify": round(n / (total - sum(write_seconds)), 2)}


def scale_write(n: int, workdir: str, repeats: int) -> dict[str, Any]:
    """``write_beton`` of ``n`` raw CIFAR-10 images, ``repeats`` times (median seconds)."""
    path = str(Path(workdir) / f"raw_{n}.beton")
    seconds = []
    for _ in range(repeats):
        seconds.append(write_cifar_beton(path, n)["seconds"])
        size = Path(path).stat().st_size
        Path(path).unlink()
    median = statistics.median(seconds)
    return {"images": n, "seconds": median, "seconds_all": seconds, "beton_bytes": size, "images_per_s": round(n / max(median, 1e-9), 1)}


def linear_fit(sizes: list[int], seconds: list[float]) -> dict[str, Any]:
    """seconds = fixed + per_image * n (least squares), and marginal per-image costs between sizes."""
    per_image, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    predicted = fixed + per_image * np.asarray(sizes, float)
    ss_res = float(np.sum((np.asarray(seconds) - predicted) ** 2))
    ss_tot = float(np.sum((np.asarray(seconds) - np.mean(seconds)) ** 2)) or 1e-12
    marginal = [(seconds[i + 1] - seconds[i]) / (sizes[i + 1] - sizes[i]) for i in range(len(sizes) - 1)]
    return {"fixed_seconds": round(float(fixed), 3), "seconds_per_image": float(f"{per_image:.4g}"), "r2": round(1 - ss_res / ss_tot, 5),
            "marginal_seconds_per_image": [float(f"{m:.4g}") for m in marginal],
            "marginal_ratio_last_to_first": round(marginal[-1] / marginal[0], 3) if marginal and marginal[0] > 0 else None}

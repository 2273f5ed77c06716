"""Save and load a trained denoiser in diffusers format: safetensors + JSON only, never pickle.

Layout of a denoiser directory::

    DIR/unet/config.json
    DIR/unet/diffusion_pytorch_model.safetensors
    DIR/scheduler/scheduler_config.json
    DIR/denoiser.json            # preset, training settings, sparse-set facts (plain JSON)
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import DDPMScheduler, UNet2DModel

PathLike = Union[str, os.PathLike]
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
METADATA_NAME = "denoiser.json"


class DenoiserNotFoundError(FileNotFoundError):
    """The directory is not a saved denoiser (missing safetensors weights or configs)."""


class DamagedDenoiserError(ValueError):
    """A denoiser file is empty, truncated, not valid JSON/safetensors, or its weights hold NaN/Inf."""


def weights_path(denoiser_dir: PathLike) -> Path:
    """Path of the U-Net's safetensors weights inside a denoiser directory."""
    return Path(denoiser_dir) / "unet" / WEIGHTS_NAME


def save_denoiser(
    unet: UNet2DModel, scheduler: DDPMScheduler, out_dir: PathLike, metadata: Optional[dict[str, Any]] = None
) -> Path:
    """Write ``unet`` (safetensors), ``scheduler`` config and ``metadata`` (JSON) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    tmp = out / f".{METADATA_NAME}.tmp"
    tmp.write_text(json.dumps(metadata or {}, indent=2, sort_keys=True, default=str))
    os.replace(tmp, out / METADATA_NAME)
    return out


def _check_dir(denoiser_dir: PathLike) -> Path:
    path = Path(denoiser_dir)
    missing = [
        str(p)
        for p in (weights_path(path), path / "unet" / "config.json", path / "scheduler" / "scheduler_config.json")
        if not p.is_file()
    ]
    if missing:
        raise DenoiserNotFoundError(
            f"{path} is not a saved denoiser (missing: {', '.join(missing)}); "
            "create one with `eclipse-loader train-denoiser` or `train_denoiser(...)`"
        )
    return path


def load_denoiser(
    denoiser_dir: PathLike, device: Union[str, torch.device, None] = None
) -> tuple[UNet2DModel, DDPMScheduler]:
    """Load the U-Net (safetensors only, eval mode) and scheduler saved by `save_denoiser`."""
    path = _check_dir(denoiser_dir)
    for config in (path / "unet" / "config.json", path / "scheduler" / "scheduler_config.json"):
        _check_json(config)
    _check_safetensors(weights_path(path))
    try:
        unet = UNet2DModel.from_pretrained(path / "unet", use_safetensors=True, low_cpu_mem_usage=False)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler")
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:  # diffusers' errors on bad configs
        raise DamagedDenoiserError(f"cannot load the denoiser in {path}: {type(error).__name__}: "
                                   f"{str(error).splitlines()[0] if str(error) else ''}") from None
    bad = [name for name, p in unet.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise DamagedDenoiserError(f"{weights_path(path)} is damaged: {len(bad)} weight tensors hold NaN/Inf "
                                   f"(e.g. {bad[0]}); retrain or restore the denoiser")
    unet.eval().requires_grad_(False)
    if device is not None:
        unet.to(device)
    return unet, scheduler


def _check_json(path: Path) -> None:
    try:
        value = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DamagedDenoiserError(f"{path} is not valid JSON ({error}); the denoiser is damaged") from None
    if not isinstance(value, dict):
        raise DamagedDenoiserError(f"{path} holds a {type(value).__name__}, not a JSON object; the denoiser is damaged")


def _check_safetensors(path: Path) -> None:
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        raise DamagedDenoiserError(f"{path} is empty; the denoiser is damaged")
    try:
        with safe_open(str(path), framework="pt") as archive:
            for name in archive.keys():
                archive.get_slice(name)
    except (SafetensorError, OSError, ValueError) as error:
        raise DamagedDenoiserError(f"{path} is not a readable safetensors file ({error}); "
                                   "the denoiser is damaged or truncated") from None


def load_metadata(denoiser_dir: PathLike) -> dict[str, Any]:
    """The JSON metadata saved next to the weights (empty dict if absent)."""
    meta = Path(denoiser_dir) / METADATA_NAME
    return json.loads(meta.read_text()) if meta.is_file() else {}


def check_serves_t_star(denoiser_dir: PathLike, t_star: int) -> None:
    """Raise ValueError when the denoiser was trained only on timesteps below ``t_star - 1``.

    Purifying from a noise level the network never saw gives blurred, wrong-coloured images without
    any error, so this is checked up front (``t_max`` of the saved metadata; none recorded: no check).
    """
    t_max = load_metadata(denoiser_dir).get("t_max")
    if t_max is not None and int(t_max) < int(t_star) - 1:
        raise ValueError(f"the denoiser in {denoiser_dir} was trained on timesteps t <= {t_max}, but purification "
                         f"with t*={t_star} starts at t={t_star - 1}: retrain it with --t-max {t_star - 1} "
                         f"(or higher), or purify with --t-star {int(t_max) + 1} or lower")


def denoiser_hash(denoiser_dir: PathLike) -> str:
    """sha256 over the weights file bytes, the U-Net config and the scheduler config."""
    path = _check_dir(denoiser_dir)
    h = hashlib.sha256()
    for part in (weights_path(path), path / "unet" / "config.json", path / "scheduler" / "scheduler_config.json"):
        h.update(part.name.encode())
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()

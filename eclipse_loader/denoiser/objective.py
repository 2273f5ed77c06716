"""What the denoiser learns, without a training framework: the eps-MSE loss, its seeds and checks.

`eclipse_loader.adapters.lightning_denoiser` runs this objective under Lightning (checkpoints, DDP,
EMA); anything else that trains a denoiser can call `denoising_loss` directly.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import LabelledImages
from .presets import NUM_TRAIN_TIMESTEPS, build_unet, get_preset


class TrainingInterrupted(RuntimeError):
    """Training stopped on SIGTERM after a completed step (its state is checkpointed with a work dir)."""


def denoising_loss(unet: torch.nn.Module, alphas_cumprod: torch.Tensor, x0: torch.Tensor,
                   generator: torch.Generator, t_high: int) -> torch.Tensor:
    """eps-MSE of ``unet`` on ``x0`` (in [-1, 1]) noised to timesteps drawn uniformly from ``[0, t_high)``.

    Noise and timesteps come from ``generator`` (a CPU generator, so runs match across devices); this is
    the fixed-variance simplification of the paper's L_hybrid.
    """
    n = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.randint(0, t_high, (n,), generator=generator).to(x0.device)
    abar = alphas_cumprod[t].view(n, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise  # the forward process in closed form
    return F.mse_loss(unet(x_t, t).sample, noise)


def noise_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the noise/timestep generator for a (re)start at ``step`` on ``rank``.

    A fresh single-process run keeps ``seed + 1`` (the draws of earlier versions); every other
    (rank, step) gets its own stream.
    """
    if rank == 0 and step == 0:
        return int(seed) + 1
    return int(np.random.SeedSequence([int(seed) + 1, int(rank), int(step)]).generate_state(1)[0])


def check_t_max(t_max: Optional[int]) -> None:
    """Raise ValueError unless ``t_max`` is None or an int in ``[0, T)``."""
    if t_max is not None and (int(t_max) != t_max or not 0 <= t_max < NUM_TRAIN_TIMESTEPS):
        raise ValueError(f"t_max must be None or an integer in [0, {NUM_TRAIN_TIMESTEPS}), got {t_max!r}")


def check_training_request(data: LabelledImages, preset: str, max_steps: int, t_max: Optional[int],
                           checkpoint_every: int, log_every: int) -> dict[str, Any]:
    """Validate a training request (one ValueError line each) and return the U-Net's constructor kwargs."""
    get_preset(preset)
    check_t_max(t_max)
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    for name, value in (("checkpoint_every", checkpoint_every), ("log_every", log_every)):
        if int(value) != value or value < 0 or (name == "log_every" and value < 1):
            raise ValueError(f"{name} must be a {'positive' if name == 'log_every' else 'non-negative'} integer, "
                             f"got {value!r}")
    if len(data) == 0:
        raise ValueError("cannot train a denoiser on an empty dataset")
    if data.image_shape[0] != data.image_shape[1]:
        raise ValueError(f"images must be square, got {data.image_shape}")
    return {k: v for k, v in dict(build_unet(preset, data.image_shape[0]).config).items() if not k.startswith("_")}

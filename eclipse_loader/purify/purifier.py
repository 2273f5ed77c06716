"""ECLIPSE purification of a batch: noise in one shot to t*, then denoise back to t = 0.

Conventions (matching the paper's code, improved-diffusion with T = 4000):

* ``t_star`` counts forward steps: the noised image is
  ``x_{t*} = sqrt(abar[t*-1]) x0 + sqrt(1 - abar[t*-1]) eps`` (0-based ``abar`` of the scheduler),
  and the full chain then visits the model timesteps ``t*-1, ..., 0`` (100 network calls for t*=100).
* Randomness: the noise of sample ``i`` depends only on ``(config.seed, i)`` and the draw number
  (forward noise, then one draw per stochastic reverse step): by default a counter-based hash drawn
  on the U-Net's device (`eclipse_loader.purify.noise`), or per-sample CPU generators seeded with
  ``sample_seed(config.seed, i)`` (``noise_rng="generator"``). Results therefore do not depend on
  batch size, batch composition or sharding.
* Batch invariance: float rounding inside some CPU kernels depends on the batch size (GEMM row
  count, channels-last GroupNorm), so the U-Net is hooked by `make_batch_invariant` (and a batch of
  one is padded to two, since oneDNN convolves a single image with another algorithm). What is
  guaranteed: the same inputs at the same batch size on the same device give identical bytes (so a
  resumed run equals an uninterrupted one). Across batch sizes a pixel may still differ by one grey
  level, rarely: measured 1-3 of 73,728 pixels between batch sizes 1/5/7 and 24 (t* = 400, 20
  steps, 1 thread, tiny preset; 0 with 2 threads), never by more than one level.
* Output: x0 clipped to [-1, 1] at every step, mapped to [0, 255] and **rounded** (the paper's
  code truncated, biasing pixels down by 0.5 on average).
"""
from __future__ import annotations

import itertools
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from diffusers import DDPMScheduler, UNet2DModel

from ..data.pixels import to_model_range, to_uint8  # re-exported: older code imports them from here
from ..recipes import NOISE_RNGS, SAMPLERS, PurifyConfig  # re-exported: the settings types live in recipes
from .batch_invariance import make_batch_invariant
from .noise import counter_normal
from .outliers import repair_isolated_pixels

class NonFiniteOutputError(ValueError):
    """The denoiser produced NaN or Inf (damaged weights, or a numerical blow-up)."""


def t_star_for_noise_std(alphas_cumprod: torch.Tensor, noise_std: float) -> int:
    """The forward step count t whose ``sqrt(1 - abar[t-1])`` is closest to ``noise_std``."""
    stds = (1.0 - alphas_cumprod.double()).sqrt()
    return int(torch.argmin((stds - float(noise_std)).abs())) + 1


def timesteps_for(t_star: int, steps: int) -> list[int]:
    """Model timesteps visited on the way back: ``t*-1 .. 0``, evenly strided when ``steps < t_star``."""
    if not 1 <= steps <= t_star:
        raise ValueError(f"steps must be in [1, t_star={t_star}], got {steps}")
    if steps == t_star:
        return list(range(t_star - 1, -1, -1))
    grid = np.round(np.linspace(t_star - 1, 0, steps)).astype(int)
    return [int(t) for t in grid]


def resolve_schedule(config: PurifyConfig, alphas_cumprod: torch.Tensor) -> tuple[int, list[int]]:
    """``(t_star, timesteps)`` of ``config`` on a scheduler with these ``alphas_cumprod`` (no U-Net needed).

    Raises:
        ValueError: t* beyond the scheduler's timesteps, or more steps than t*.
    """
    abar = alphas_cumprod.double()
    t_star = config.t_star if config.t_star is not None else t_star_for_noise_std(
        abar, float(config.noise_std))  # type: ignore[arg-type]
    if t_star > len(abar):
        raise ValueError(f"t_star={t_star} exceeds the scheduler's {len(abar)} timesteps")
    steps = config.steps if config.steps is not None else t_star
    if steps > t_star:
        raise ValueError(f"steps ({steps}) cannot exceed t_star ({t_star})")
    return int(t_star), timesteps_for(int(t_star), steps)


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample ``index``'s generator: a 63-bit hash of ``(seed, index)``."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class Purifier:
    """Batched ECLIPSE purification with a trained U-Net and its scheduler (img2img pattern).

    Args:
        unet: eps-prediction `UNet2DModel` (moved to ``device``, put in eval mode).
        scheduler: the `DDPMScheduler` it was trained with (only ``alphas_cumprod`` is used).
        config: a `PurifyConfig`.
        device: where the U-Net runs (default: the U-Net's current device).

    Note: the U-Net is moved to ``device``, put in eval mode and hooked by `make_batch_invariant`.
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        config: PurifyConfig = PurifyConfig(),
        device: Union[str, torch.device, None] = None,
    ) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else next(unet.parameters()).device
        self.unet = unet.to(self.device).eval()
        make_batch_invariant(self.unet)
        self.alphas_cumprod = scheduler.alphas_cumprod.double()
        self.t_star, self.timesteps = resolve_schedule(config, self.alphas_cumprod)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process in one shot: ``sqrt(abar) x0 + sqrt(1 - abar) noise`` at ``abar[t*-1]``."""
        # not DDPMScheduler.add_noise: it works in float32, and on 64 CIFAR images (default recipe, tiny
        # U-Net) 4 of 196,608 output bytes moved by one grey level, which would change every committed output
        abar = self.alphas_cumprod[self.t_star - 1]
        return (abar.sqrt() * x0.double() + (1.0 - abar).sqrt() * noise.double()).float()

    def step(self, x_t: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, z: Optional[torch.Tensor]) -> torch.Tensor:
        """One reverse step from model timestep ``t`` to ``t_prev`` (``-1``: the clean image).

        DDPM: sample from q(x_{t_prev} | x_t, x0_hat) with the fixed posterior variance (noise
        ``z``, skipped when ``t_prev < 0``); DDIM: the eta = 0 update. x0_hat is clipped to [-1, 1].
        """
        # Hand-written, measured against diffusers 0.42 (tests check the two agree to 1e-5):
        # * DDPMScheduler.step draws its noise itself from a torch.Generator and takes no noise tensor,
        #   so the default counter-based noise cannot go through it; with per-sample generators
        #   (noise_rng="generator") its float32 coefficients moved 1,115 of 196,608 output bytes
        #   (64 images, t* = 100, 10 steps) by one grey level.
        # * DDIMScheduler.set_timesteps takes no custom timesteps and step() derives the previous
        #   timestep from a uniform stride (T // steps), not from our strided grid (399 -> -1601 for [399, 0]).
        abar_t = float(self.alphas_cumprod[t])
        abar_prev = float(self.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
        # 1. predicted clean image (formula (15) of DDPM), clipped
        x0 = ((x_t - (1.0 - abar_t) ** 0.5 * eps) / abar_t**0.5).clamp(-1.0, 1.0)
        if self.config.sampler == "ddim":
            # 2a. DDIM eta=0: re-derive eps from the clipped x0, jump to t_prev deterministically
            eps_hat = (x_t - abar_t**0.5 * x0) / (1.0 - abar_t) ** 0.5
            return abar_prev**0.5 * x0 + (1.0 - abar_prev) ** 0.5 * eps_hat
        if self.config.sampler != "ddpm":
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.config.sampler!r}")
        # 2b. DDPM posterior mean (formula (7)) between t and t_prev, plus fixed-variance noise
        alpha = abar_t / abar_prev
        beta = 1.0 - alpha
        mean = (abar_prev**0.5 * beta / (1.0 - abar_t)) * x0 + (alpha**0.5 * (1.0 - abar_prev) / (1.0 - abar_t)) * x_t
        if t_prev < 0:
            return mean
        variance = max((1.0 - abar_prev) / (1.0 - abar_t) * beta, 1e-20)
        assert z is not None
        return mean + variance**0.5 * z

    @torch.no_grad()
    def purify_tensor(self, x0: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
        """Purify ``x0`` (float NCHW in [-1, 1]); sample ``k`` uses the noise of ``indices[k]``."""
        if x0.ndim != 4 or x0.shape[1] != 3:
            raise ValueError(f"x0 must have shape (B, 3, H, W), got {tuple(x0.shape)}")
        if len(indices) != x0.shape[0]:
            raise ValueError(f"{x0.shape[0]} images but {len(indices)} indices")
        draw = self._noise_source(indices, tuple(x0.shape[1:]))
        x = self.add_noise(x0.to(self.device, non_blocking=True), draw())
        autocast = self.config.bf16 and self.device.type == "cuda"
        for k, t in enumerate(self.timesteps):
            t_prev = self.timesteps[k + 1] if k + 1 < len(self.timesteps) else -1
            t_batch = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                eps = self._eps(x, t_batch)
            z = draw() if self.config.sampler == "ddpm" and t_prev >= 0 else None
            x = self.step(x, eps.float(), t, t_prev, z)
        return x.clamp(-1.0, 1.0)

    def _noise_source(self, indices: Sequence[int], shape: tuple[int, ...]) -> Callable[[], torch.Tensor]:
        """A function returning the next draw of every sample's noise, on the U-Net's device."""
        if self.config.noise_rng == "counter":
            positions = torch.as_tensor([int(i) for i in indices], dtype=torch.int64).to(self.device)
            draws = itertools.count()
            return lambda: counter_normal(self.config.seed, positions, next(draws), shape)
        if self.config.noise_rng != "generator":
            raise ValueError(f"noise_rng must be one of {NOISE_RNGS}, got {self.config.noise_rng!r}")
        gens = [torch.Generator().manual_seed(sample_seed(self.config.seed, int(i))) for i in indices]
        return lambda: torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)

    def _eps(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:  # oneDNN picks another convolution algorithm for N=1: pad to N=2
            return self.unet(x.repeat(2, 1, 1, 1), t.repeat(2)).sample[:1]
        return self.unet(x, t).sample

    def purify(self, images: np.ndarray, indices: Sequence[int]) -> np.ndarray:
        """Purify uint8 NHWC ``images`` (dataset positions ``indices``) to uint8 NHWC."""
        if self.config.repair_threshold is not None:
            images, _ = repair_isolated_pixels(images, self.config.repair_threshold)
        x0 = to_model_range(images)
        if self.device.type == "cuda":
            x0 = x0.pin_memory()  # lets the copy to the GPU run asynchronously
        x = self.purify_tensor(x0, indices)
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        if bad:
            raise NonFiniteOutputError(f"the denoiser produced NaN/Inf for {bad} of {len(x)} images")
        return to_uint8(x)

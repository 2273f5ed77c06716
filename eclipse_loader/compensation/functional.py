"""Pure torch kernels of the corruption compensation (ECLIPSE Eq. 13), on uint8 image batches.

Semantics, per sample ``i`` of epoch ``e`` under ``seed`` (shared exactly with the FFCV Operation):

1. With probability ``p_gray``: replace R, G, B by the ITU-R 601-2 luma computed in integers exactly as
   PIL's ``convert("L")`` does, ``(19595 R + 38470 G + 7471 B + 32768) >> 16``.
2. Add Gaussian noise of std ``sigma`` (in [0, 1] pixel units, i.e. ``255 * sigma`` levels) to every
   channel of every pixel independently (a grayscale image gets coloured noise, as in the paper's code),
   rounded half up, and clamp to [0, 255].

Every draw derives from the sample's 32-bit key ``counter_rng.sample_key(seed, e, i)``: grayscale from
``gray_word(key)``, the noise from runs of a fixed table of N(0, 1) values at hashed offsets (see
`noise_table`; values numbered ``j = (h * W + w) * C + c``, HWC order, as FFCV stores images). All of
it is integer arithmetic and table reads, so torch (CPU or CUDA) and numba agree bit for bit.
"""
from __future__ import annotations

import functools

import torch

from . import counter_rng as rng
from . import noise_table

LUMA_R, LUMA_G, LUMA_B, LUMA_HALF = 19595, 38470, 7471, 32768


def luma_uint8(images: torch.Tensor) -> torch.Tensor:
    """PIL-exact luma of uint8 images ``(..., 3, H, W)``, returned as ``(..., 1, H, W)`` uint8."""
    wide = images.to(torch.int32)
    r, g, b = wide[..., 0:1, :, :], wide[..., 1:2, :, :], wide[..., 2:3, :, :]
    return ((r * LUMA_R + g * LUMA_G + b * LUMA_B + LUMA_HALF) >> 16).to(torch.uint8)


def sample_keys(seed: int, epoch: int, indices: torch.Tensor) -> torch.Tensor:
    """int64 keys (one per sample index) on the indices' device."""
    return rng.sample_key(int(seed), int(epoch), indices.to(torch.int64))


def gray_mask(keys: torch.Tensor, p_gray: float) -> torch.Tensor:
    """Boolean mask, True where the sample is turned grayscale."""
    return rng.to_unit_open(rng.gray_word(keys).to(torch.float64)) < p_gray


@functools.lru_cache(maxsize=16)
def _tables(noise_scale: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The rounded noise table as overlapping runs ``(TABLE_SIZE, RUN_LENGTH)`` (a strided view),
    on ``device``."""
    levels = torch.from_numpy(noise_table.rounded_noise_table(noise_scale).copy()).to(device)
    return levels, levels.unfold(0, noise_table.RUN_LENGTH, 1)


@functools.lru_cache(maxsize=16)
def _run_salts(num_values: int, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(noise_table.run_salts(num_values)).to(device)


def noise_levels(keys: torch.Tensor, shape_chw: tuple[int, int, int], noise_scale: float) -> torch.Tensor:
    """int16 noise in grey levels, ``floor(noise_scale * z + 0.5)``, shape ``(B, C, H, W)``."""
    c, h, w = shape_chw
    num_values = c * h * w
    salts = _run_salts(num_values, keys.device)
    offsets = rng.run_offset(keys.view(-1, 1), salts.view(1, -1), noise_table.TABLE_BITS)  # (B, runs)
    _, runs = _tables(float(noise_scale), keys.device)
    flat = runs.index_select(0, offsets.view(-1)).view(keys.shape[0], -1)[:, :num_values]  # values in HWC order
    return flat.view(-1, h, w, c).permute(0, 3, 1, 2)


def compensate_batch(
    images: torch.Tensor,
    indices: torch.Tensor,
    *,
    p_gray: float,
    sigma: float,
    seed: int,
    epoch: int,
) -> torch.Tensor:
    """Apply the compensation to a uint8 batch ``(B, 3, H, W)``; returns a new uint8 tensor.

    ``indices`` are the dataset indices of the samples (they, not batch positions, key the draws).
    """
    if indices.shape != (images.shape[0],):
        raise ValueError(f"need one index per image: {tuple(indices.shape)} for batch {images.shape[0]}")
    keys = sample_keys(seed, epoch, indices.to(images.device))
    return compensate_with_keys(images, keys, p_gray=p_gray, sigma=sigma)


def compensate_with_keys(images: torch.Tensor, keys: torch.Tensor, *, p_gray: float, sigma: float) -> torch.Tensor:
    """The compensation of a uint8 batch ``(B, 3, H, W)`` whose per-sample 32-bit keys are given."""
    if images.dtype != torch.uint8:
        raise TypeError(f"CorruptionCompensation expects uint8 images, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) batch, got shape {tuple(images.shape)}")
    out = images
    if p_gray > 0:
        gray = gray_mask(keys, p_gray).nonzero().view(-1)  # luma only where needed: ~p_gray of the batch
        if len(gray):
            luma = luma_uint8(images.index_select(0, gray)).expand(-1, 3, -1, -1)
            out = images.clone().index_copy_(0, gray, luma)
    if sigma > 0:
        noise = noise_levels(keys, tuple(images.shape[1:]), 255.0 * sigma)
        out = (out.to(torch.int16) + noise).clamp_(0, 255).to(torch.uint8)
    return out.clone() if out is images else out

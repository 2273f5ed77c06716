"""Pure torch kernels of the corruption compensation (ECLIPSE Eq. 13), on uint8 images.

Semantics, per sample ``i`` of epoch ``e`` under ``seed`` (shared exactly with the FFCV Operation):

1. With probability ``p_gray``: replace R, G, B by the ITU-R 601-2 luma computed in integers exactly as
   PIL's ``convert("L")`` does, ``(19595 R + 38470 G + 7471 B + 32768) >> 16``.
2. Add Gaussian noise of std ``sigma`` (in [0, 1] pixel units, i.e. ``255 * sigma`` levels) to every
   channel of every pixel independently (a grayscale image gets coloured noise, as in the paper's code).
3. Round half up and clamp to [0, 255], back to uint8.

The draws are counter-based (`counter_rng`): element ``j = (h * W + w) * C + c`` (HWC order) of sample
``i`` uses ``N(0,1) = sqrt(-2 ln u1) cos(2 pi u2)`` with ``u1, u2`` hashed from ``(key_i, 2j)`` and
``(key_i, 2j + 1)``. Arithmetic is float64 so torch and numba agree bit for bit after rounding.
"""
from __future__ import annotations

import math

import torch

from . import counter_rng as rng

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


def standard_normal(keys: torch.Tensor, shape_chw: tuple[int, int, int]) -> torch.Tensor:
    """float64 N(0,1) draws of shape ``(B, C, H, W)``, element ``j`` numbered in HWC order."""
    c, h, w = shape_chw
    device = keys.device
    hh = torch.arange(h, device=device, dtype=torch.int64).view(1, h, 1)
    ww = torch.arange(w, device=device, dtype=torch.int64).view(1, 1, w)
    cc = torch.arange(c, device=device, dtype=torch.int64).view(c, 1, 1)
    j = (hh * w + ww) * c + cc  # (C, H, W): the HWC element number
    salt1 = rng.element_salt(2 * j)
    salt2 = rng.element_salt(2 * j + 1)
    k = keys.view(-1, 1, 1, 1)
    u1 = rng.to_unit_open(rng.hash32(k ^ salt1).to(torch.float64))
    u2 = rng.to_unit_open(rng.hash32(k ^ salt2).to(torch.float64))
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)


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
        mask = gray_mask(keys, p_gray).view(-1, 1, 1, 1)
        out = torch.where(mask, luma_uint8(images).expand_as(images), images)
    if sigma > 0:
        noisy = out.to(torch.float64) + (255.0 * sigma) * standard_normal(keys, tuple(images.shape[1:]))
        out = torch.floor(noisy + 0.5).clamp_(0, 255).to(torch.uint8)
    return out.clone() if out is images else out

"""Whole-batch training augmentation in torch (CPU or GPU): flip, translation, compensation, scaling.

Every random choice is keyed by the sample's ``(seed, epoch, dataset index)`` (`counter_rng`), never
by its batch position, so the result does not depend on batch size, order or device. The
compensation is `compensation.functional.compensate_with_keys` with the key of
``counter_rng.sample_key(seed, epoch, index)``: bit-identical to the FFCV Operation `CompensateFFCV`.
Flip and translation draw from a second key derived from the same one (FFCV's own flip/translate ops
are unseeded, so only the torch loader reproduces them).
"""
from __future__ import annotations

import torch

from ..compensation import counter_rng as rng
from ..compensation.functional import compensate_with_keys
from .config import AugmentConfig

_FLIP_STREAM, _SHIFT_Y_STREAM, _SHIFT_X_STREAM = 0x1B873593, 0x27D4EB2F, 0x165667B1
_GEOMETRY_STREAM = 0x7F4A7C15


def flip_and_translate(images: torch.Tensor, keys: torch.Tensor, flip: bool, padding: int) -> torch.Tensor:
    """Per-sample horizontal flip (p=0.5), then a zero-filled shift of up to ``padding`` pixels
    (RandomCrop with padding), of a uint8 batch ``(B, C, H, W)``, keyed by ``keys``.

    Returns ``(B, C, H, W)`` in channels-last memory (how the loaders hold images).
    """
    b, c, h, w = images.shape
    pixels = images.permute(0, 2, 3, 1)  # (B, H, W, C): a view for channels-last input
    if flip:
        flipped = (rng.hash32(keys ^ _FLIP_STREAM) & 1).bool().nonzero().view(-1)
        if len(flipped):
            pixels = pixels.clone()
            pixels[flipped] = pixels[flipped].flip(2)
    if padding <= 0:
        return pixels.permute(0, 3, 1, 2)
    shifts = 2 * padding + 1
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = pixels.new_zeros((b, hp, wp, c))
    padded[:, padding:padding + h, padding:padding + w] = pixels
    # every (dy, dx) crop of every padded image, as a view: windows[i, dy, dx] = padded[i, dy:dy+h, dx:dx+w]
    windows = padded.as_strided((b, shifts, shifts, h, w * c), (hp * wp * c, wp * c, c, wp * c, 1))
    dy = rng.hash32(keys ^ _SHIFT_Y_STREAM) % shifts
    dx = rng.hash32(keys ^ _SHIFT_X_STREAM) % shifts
    crops = windows[torch.arange(b, device=images.device), dy, dx]
    return crops.view(b, h, w, c).permute(0, 3, 1, 2)


def augment_batch(
    images: torch.Tensor, indices: torch.Tensor, augment: AugmentConfig, seed: int, epoch: int
) -> torch.Tensor:
    """Flip, translation and compensation of the uint8 batch ``(B, 3, H, W)`` of dataset ``indices``
    in ``epoch`` (all on the images' device); returns uint8 ``(B, 3, H, W)``."""
    keys = rng.sample_key(int(seed), int(epoch), indices.to(device=images.device, dtype=torch.int64))
    if augment.flip or augment.translate_padding > 0:
        images = flip_and_translate(images, rng.hash32(keys ^ _GEOMETRY_STREAM), augment.flip, augment.translate_padding)
    if augment.compensate:
        images = compensate_with_keys(images, keys, p_gray=augment.p_gray, sigma=augment.sigma)
    return images


class Normalizer:
    """uint8 ``(B, C, H, W)`` -> float32 ``(x - mean) / std`` on the 0-255 scale of `AugmentConfig.scale`."""

    def __init__(self, normalize: AugmentConfig, device: torch.device) -> None:
        mean, std = normalize.scale
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std

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
from .config import AugmentConfig, Normalization

_FLIP_STREAM, _SHIFT_Y_STREAM, _SHIFT_X_STREAM = 0x1B873593, 0x27D4EB2F, 0x165667B1
_GEOMETRY_STREAM = 0x7F4A7C15


def flip_and_translate(images: torch.Tensor, keys: torch.Tensor, flip: bool, padding: int) -> torch.Tensor:
    """Per-sample horizontal flip (p=0.5), then a zero-filled shift of up to ``padding`` pixels
    (RandomCrop with padding), of a uint8 batch ``(B, C, H, W)``, keyed by ``keys``.

    Returns ``(B, C, H, W)`` in channels-last memory (how the loaders hold images). One copy into a
    zero-padded buffer (and its mirror image when flipping), then one ``index_select`` of the crops.
    """
    b, c, h, w = images.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    sources = images.new_zeros((2 if flip else 1, b, hp, wp, c))
    sources[0, :, padding:padding + h, padding:padding + w] = images.permute(0, 2, 3, 1)
    if flip:
        sources[1] = sources[0].flip(2)  # pad(flip(x)) == flip(pad(x)): zero padding is symmetric
    # start (in pixels) of the crop of each sample: image, flipped or not, row dy, column dx
    start = torch.arange(b, device=images.device) * (hp * wp)
    if flip:
        start = start + (rng.hash32(keys ^ _FLIP_STREAM) & 1) * (b * hp * wp)
    if padding > 0:
        shifts = 2 * padding + 1
        start = start + (rng.hash32(keys ^ _SHIFT_Y_STREAM) % shifts) * wp + rng.hash32(keys ^ _SHIFT_X_STREAM) % shifts
    # every crop of the buffer that starts at a pixel, as an overlapping view (no copy)
    starts = sources.numel() // c - (h - 1) * wp - w + 1
    crops = sources.view(-1).as_strided((starts, h, w * c), (c, wp * c, 1))
    return crops.index_select(0, start).view(b, h, w, c).permute(0, 3, 1, 2)


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
    """uint8 ``(B, C, H, W)`` -> float32 ``(x - mean) / std`` on the 0-255 scale of `Normalization.scale`
    (the same float operations as torchvision's ``Normalize`` after ``Convert(float32)`` in FFCV)."""

    def __init__(self, normalization: Normalization, device: torch.device) -> None:
        mean, std = normalization.scale
        self.uniform = len(set(mean)) == 1 and len(set(std)) == 1
        self.mean = torch.tensor(mean, device=device)
        self.std = torch.tensor(std, device=device)
        self.mean_scalar, self.std_scalar = float(mean[0]), float(std[0])

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.uniform:  # scalar operands: much faster than a (1, 3, 1, 1) broadcast on channels-last data
            out = images.float()
            if self.mean_scalar:
                out.sub_(self.mean_scalar)
            return out.div_(self.std_scalar)
        pixels = images.permute(0, 2, 3, 1).float()  # (B, H, W, C): the channel is the contiguous axis
        return pixels.sub_(self.mean).div_(self.std).permute(0, 3, 1, 2)

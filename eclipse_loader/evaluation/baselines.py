"""Baseline offline defences from the literature (image shortcut squeezing; Liu et al., ICML 2023):
JPEG compression and grayscale conversion of the training images."""
from __future__ import annotations

import numpy as np
import torch

from ..compensation.functional import luma_uint8
from ..data.images import LabelledImages


def jpeg(data: LabelledImages, quality: int = 10) -> LabelledImages:
    """Re-encode every image as JPEG at ``quality`` (1-100) and decode it (torchvision.io, libjpeg)."""
    return LabelledImages(jpeg_pixels(data.images, quality), data.labels.copy(), data.num_classes)


def jpeg_pixels(images: np.ndarray, quality: int = 10) -> np.ndarray:
    """`jpeg` on bare uint8 NHWC pixels."""
    from torchvision.io import decode_jpeg, encode_jpeg

    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in [1, 100], got {quality}")
    chw = torch.from_numpy(images).permute(0, 3, 1, 2)
    out = np.empty_like(images)
    for start in range(0, len(images), 1024):
        encoded = encode_jpeg(list(chw[start:start + 1024].contiguous()), quality=quality)
        decoded = decode_jpeg(encoded)
        out[start:start + len(decoded)] = torch.stack(decoded).permute(0, 2, 3, 1).numpy()
    return out


def grayscale(data: LabelledImages) -> LabelledImages:
    """Replace every image by its luma (PIL's exact integer formula) in all three channels."""
    return LabelledImages(grayscale_pixels(data.images), data.labels.copy(), data.num_classes)


def grayscale_pixels(images: np.ndarray) -> np.ndarray:
    """`grayscale` on bare uint8 NHWC pixels."""
    chw = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return luma_uint8(chw).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()

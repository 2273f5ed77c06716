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


#: chroma block sizes (pixels) the evaluation harness and the selection offer
CHROMA_BLOCKS = (4, 8, 16)


def chroma_low_pass(images: torch.Tensor, block: int) -> torch.Tensor:
    """Keep the luma of float RGB images ``(N, 3, H, W)`` and replace their chroma (JPEG's Cb and Cr) by its
    mean over ``block`` x ``block`` areas, upsampled bilinearly: grayscale's squeezing of colour shortcuts,
    without discarding the coarse colour a classifier uses. Differentiable; any value range."""
    import torch.nn.functional as F

    if block < 1:
        raise ValueError(f"block must be a positive number of pixels, got {block}")
    r, g, b = images.unbind(1)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    chroma = torch.stack([-0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b], 1)
    height, width = images.shape[-2:]
    coarse = F.adaptive_avg_pool2d(chroma, (max(1, -(-height // block)), max(1, -(-width // block))))
    cb, cr = F.interpolate(coarse, (height, width), mode="bilinear", align_corners=False).unbind(1)
    return torch.stack([luma + 1.402 * cr, luma - 0.344136 * cb - 0.714136 * cr, luma + 1.772 * cb], 1)


def chroma(data: LabelledImages, block: int = 8) -> LabelledImages:
    """`chroma_low_pass` on every training image (uint8 in, uint8 out)."""
    return LabelledImages(chroma_pixels(data.images, block), data.labels.copy(), data.num_classes)


def chroma_pixels(images: np.ndarray, block: int = 8) -> np.ndarray:
    """`chroma` on bare uint8 NHWC pixels (float32 arithmetic, rounded; each image independently)."""
    out = np.empty_like(images)
    for start in range(0, len(images), 1024):
        chw = torch.from_numpy(np.ascontiguousarray(images[start:start + 1024])).permute(0, 3, 1, 2).float()
        low = chroma_low_pass(chw, block).round().clamp(0, 255).to(torch.uint8)
        out[start:start + len(chw)] = low.permute(0, 2, 3, 1).numpy()
    return out

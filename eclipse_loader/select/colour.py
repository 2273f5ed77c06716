"""Colour defences: keep each training image's luma, take its chroma (JPEG's Cb and Cr) from elsewhere.

Grayscale squeezes colour shortcuts (EM, LSP) but costs a short-trained victim ~15 points on clean colour
test images: trained on r = g = b, the network never learns what to do with colour (trained and tested on
grayscale, the cpu-quick victim loses 2 points, not 16). Two lighter ways to take the shortcut out of the
chroma instead:

* `chroma_low_pass` (``chromaK``): the chroma averaged over K x K blocks (the coarse colour stays);
* `swap_chroma` (``chroma-swap``): each image takes the chroma of another training image (a seeded random
  derangement), so colour carries no information about the label, and the poison's chroma lands on images
  of other classes; the victim learns to rely on luma and sees natural colour while it trains.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.images import LabelledImages

#: chroma block sizes (pixels) the evaluation harness offers as offline steps
CHROMA_BLOCKS = (4, 8, 16)
#: seed of the donor derangement of ``chroma-swap`` (a recipe names no seed: the same data gets the same donors)
CHROMA_SWAP_SEED = 0

_TO_YCC = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
_TO_RGB = torch.tensor([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]])


def to_ycbcr(images: torch.Tensor) -> torch.Tensor:
    """Float RGB ``(N, 3, H, W)`` as (Y, Cb, Cr) (JPEG's full-range transform, no offset; any value range)."""
    return torch.einsum("ij,njhw->nihw", _TO_YCC.to(images), images)


def from_ycbcr(ycc: torch.Tensor) -> torch.Tensor:
    """The inverse of `to_ycbcr`."""
    return torch.einsum("ij,njhw->nihw", _TO_RGB.to(ycc), ycc)


def chroma_low_pass(images: torch.Tensor, block: int) -> torch.Tensor:
    """Keep the luma of float RGB images ``(N, 3, H, W)`` and replace their chroma by its mean over ``block`` x
    ``block`` areas, upsampled bilinearly. Differentiable; any value range."""
    import torch.nn.functional as F

    if block < 1:
        raise ValueError(f"block must be a positive number of pixels, got {block}")
    ycc = to_ycbcr(images)
    height, width = images.shape[-2:]
    coarse = F.adaptive_avg_pool2d(ycc[:, 1:], (max(1, -(-height // block)), max(1, -(-width // block))))
    chroma = F.interpolate(coarse, (height, width), mode="bilinear", align_corners=False)
    return from_ycbcr(torch.cat([ycc[:, :1], chroma], 1))


def swap_chroma_float(images: torch.Tensor, donors: torch.Tensor) -> torch.Tensor:
    """The luma of ``images`` with the chroma of ``donors`` (same shape, float RGB). Differentiable."""
    if images.shape != donors.shape:
        raise ValueError(f"images {tuple(images.shape)} and donors {tuple(donors.shape)} differ in shape")
    return from_ycbcr(torch.cat([to_ycbcr(images)[:, :1], to_ycbcr(donors)[:, 1:]], 1))


def _uint8_blocks(fn, *arrays: np.ndarray) -> np.ndarray:
    """``fn`` on float NCHW views of uint8 NHWC ``arrays``, 1,024 images at a time, rounded back to uint8."""
    out = np.empty_like(arrays[0])
    for start in range(0, len(out), 1024):
        tensors = [torch.from_numpy(np.ascontiguousarray(a[start:start + 1024])).permute(0, 3, 1, 2).float()
                   for a in arrays]
        result = fn(*tensors).round().clamp(0, 255).to(torch.uint8)
        out[start:start + len(tensors[0])] = result.permute(0, 2, 3, 1).numpy()
    return out


def chroma_pixels(images: np.ndarray, block: int = 8) -> np.ndarray:
    """`chroma_low_pass` on uint8 NHWC pixels (float32 arithmetic, rounded; each image on its own)."""
    return _uint8_blocks(lambda x: chroma_low_pass(x, block), images)


def chroma(data: LabelledImages, block: int = 8) -> LabelledImages:
    """`chroma_pixels` on every training image."""
    return LabelledImages(chroma_pixels(data.images, block), data.labels.copy(), data.num_classes)


def swap_chroma_pixels(images: np.ndarray, donor_images: np.ndarray) -> np.ndarray:
    """`swap_chroma_float` on uint8 NHWC pixels: image i keeps its luma and takes ``donor_images[i]``'s chroma."""
    return _uint8_blocks(swap_chroma_float, images, donor_images)


def chroma_donors(count: int, seed: int = CHROMA_SWAP_SEED) -> np.ndarray:
    """For each of ``count`` images the index of its chroma donor: one random cycle through all of them (a
    derangement, so no image keeps its own chroma when ``count`` >= 2), seeded by ``seed``."""
    if count < 1:
        raise ValueError(f"count must be positive, got {count}")
    order = np.random.default_rng(seed).permutation(count)
    donors = np.empty(count, dtype=np.int64)
    donors[order] = np.roll(order, -1)
    return donors


def swap_chroma_among(images: np.ndarray, seed: int = CHROMA_SWAP_SEED) -> np.ndarray:
    """Each of the uint8 NHWC ``images`` with the chroma of its donor among them (`chroma_donors`)."""
    images = np.asarray(images)
    return swap_chroma_pixels(images, images[chroma_donors(len(images), seed)])


def swap_chroma(data: LabelledImages, seed: int = CHROMA_SWAP_SEED) -> LabelledImages:
    """`swap_chroma_among` on every training image."""
    return LabelledImages(swap_chroma_among(data.images, seed), data.labels.copy(), data.num_classes)

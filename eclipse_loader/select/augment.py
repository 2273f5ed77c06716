"""RSK+FF: random sharpening kernels then DCT low-pass filtering, the CUDA-targeting training augmentation.

From Kim & Sandoval-Segura, "Learning from Convolution-based Unlearnable Datasets" (arXiv 2411.01742;
CIFAR-10 CUDA 23.3% -> 78.5%). CUDA poisons blur each class with its own kernel; per image and per
epoch this transform

1. sharpens with a random 3x3 kernel ``[[0, -n1, 0], [-n2, c, -n3], [0, -n4, 0]]``, the centre
   ``c ~ N(2.5, 0.1)`` and each neighbour ``n_k ~ N((c - 1) / 4, 0.1)`` (a kernel summing to ~1),
   applied to every channel and clamped to [0, 1];
2. keeps only the lowest ``keep`` fraction (30%) of DCT-II rows and columns (orthonormal 2-D DCT
   of each channel), zeroes the rest, transforms back and clamps to [0, 1].

Differences from the authors' code (github.com/aseriesof-tubes/RSK, ``augments.py``): their
sharpening convolves without padding (32 -> 30 pixels, restored by the following padded crop);
here the border is replicated so the size is kept. The DCT is a matrix product (no ``torch_dct``).
Works on uint8 batches ``(B, 3, H, W)`` and returns uint8 (rounded), so it composes with the
compensation; the draws come from a `torch.Generator` the caller seeds (e.g. from seed and epoch).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

CENTER_MEAN = 2.5
KERNEL_STD = 0.1
KEEP_FRACTION = 0.30


def dct_matrix(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``D`` (n x n): ``D @ x`` transforms the columns of ``x``."""
    k = torch.arange(n, dtype=dtype).view(-1, 1)
    i = torch.arange(n, dtype=dtype).view(1, -1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d


def random_sharpen_kernels(count: int, generator: Optional[torch.Generator] = None,
                           center_mean: float = CENTER_MEAN, std: float = KERNEL_STD) -> torch.Tensor:
    """``count`` random sharpening kernels (count, 3, 3), drawn as in the paper."""
    center = center_mean + std * torch.randn(count, generator=generator, dtype=torch.float64)
    neighbours = (center - 1.0).view(-1, 1) / 4.0 + std * torch.randn(count, 4, generator=generator,
                                                                         dtype=torch.float64)
    kernels = torch.zeros(count, 3, 3, dtype=torch.float64)
    kernels[:, 1, 1] = center
    kernels[:, 0, 1], kernels[:, 1, 0], kernels[:, 1, 2], kernels[:, 2, 1] = (-neighbours).unbind(1)
    return kernels


def sharpen(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Float images (B, C, H, W) in [0, 1], each convolved with its own (3, 3) kernel, border replicated."""
    b, c, h, w = images.shape
    padded = F.pad(images.reshape(1, b * c, h, w), (1, 1, 1, 1), mode="replicate")
    weight = kernels.to(images.dtype).repeat_interleave(c, dim=0).view(b * c, 1, 3, 3)
    return F.conv2d(padded, weight, groups=b * c).view(b, c, h, w).clamp(0.0, 1.0)


def dct_low_pass(images: torch.Tensor, keep: float = KEEP_FRACTION) -> torch.Tensor:
    """Keep the lowest ``int(keep * H)`` DCT rows and ``int(keep * W)`` columns of each channel; clamp to [0, 1]."""
    _, _, h, w = images.shape
    dh, dw = dct_matrix(h, images.dtype).to(images.device), dct_matrix(w, images.dtype).to(images.device)
    coeffs = dh @ images @ dw.T
    mask = torch.zeros(h, w, dtype=images.dtype, device=images.device)
    mask[: int(h * keep), : int(w * keep)] = 1.0
    return (dh.T @ (coeffs * mask) @ dw).clamp(0.0, 1.0)


def rsk_ff(images: torch.Tensor, generator: Optional[torch.Generator] = None, keep: float = KEEP_FRACTION,
           center_mean: float = CENTER_MEAN, kernels: Optional[torch.Tensor] = None) -> torch.Tensor:
    """RSK+FF on a uint8 batch (B, 3, H, W): random sharpening, then DCT low-pass; returns uint8.

    ``kernels`` (B, 3, 3): use these instead of drawing them from ``generator``.
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"rsk_ff needs a uint8 batch (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    if kernels is None:
        kernels = random_sharpen_kernels(len(images), generator, center_mean)  # drawn on the CPU, any device works
    x = images.to(torch.float64) / 255.0
    x = dct_low_pass(sharpen(x, kernels.to(x.device)), keep)
    return (x * 255.0).round().clamp(0, 255).to(torch.uint8)


class RandomSharpenFrequencyFilter(torch.nn.Module):
    """RSK+FF as a transform on uint8 tensors (one image ``(3, H, W)`` or a batch); draws from torch's RNG.

    Args:
        keep: fraction of the lowest DCT rows/columns kept (paper: 0.30).
        center_mean: mean of the sharpening kernel's centre (paper: 2.5).
    """

    def __init__(self, keep: float = KEEP_FRACTION, center_mean: float = CENTER_MEAN) -> None:
        super().__init__()
        if not 0.0 < keep <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {keep}")
        self.keep, self.center_mean = float(keep), float(center_mean)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        single = images.ndim == 3
        out = rsk_ff(images[None] if single else images, None, self.keep, self.center_mean)
        return out[0] if single else out

    def extra_repr(self) -> str:
        return f"keep={self.keep}, center_mean={self.center_mean}"


def rsk_ff_keyed(images: torch.Tensor, indices: torch.Tensor, seed: int, epoch: int,
                 keep: float = KEEP_FRACTION) -> torch.Tensor:
    """RSK+FF on a uint8 batch whose draws depend only on ``(seed, epoch, dataset index)`` of each sample
    (not on the batch it is in): the form a training loop or another loader can call per batch."""
    kernels = []
    for index in indices.tolist():
        state = np.random.SeedSequence([int(seed), int(epoch), int(index)]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed((int(state[0]) << 32) | int(state[1]))
        kernels.append(random_sharpen_kernels(1, generator)[0])
    return rsk_ff(images, keep=keep, kernels=torch.stack(kernels))

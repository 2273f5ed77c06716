"""A PNG grid for eyeballing purification: original / purified / compensated rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torchvision.utils import save_image

from ..compensation.transform import CorruptionCompensation
from ..recipes import DEFAULT_RECIPE

PathLike = Union[str, os.PathLike]


def save_preview(
    original: np.ndarray,
    purified: np.ndarray,
    path: PathLike,
    *,
    indices: Optional[Sequence[int]] = None,
    count: int = 8,
    p_gray: float = DEFAULT_RECIPE.p_gray,
    sigma: float = DEFAULT_RECIPE.sigma,
    seed: int = 0,
    upscale: int = 2,
) -> Path:
    """Write a 3-row PNG grid: originals, purified images, purified + corruption compensation.

    Args:
        original: uint8 NHWC images (e.g. the poisoned training set).
        purified: uint8 NHWC purified images, aligned with ``original``.
        path: the PNG to write (parent directories are created).
        indices: which samples to show (default: the first ``count``); they also key the
            compensation draws, as in training.
        count: columns when ``indices`` is not given.
        p_gray, sigma, seed: `CorruptionCompensation` settings (paper: 0.4, 0.05).
        upscale: nearest-neighbour magnification of each image.

    Returns:
        ``path`` as a `Path`.
    """
    if original.shape != purified.shape:
        raise ValueError(f"original {original.shape} and purified {purified.shape} must have the same shape")
    if indices is None:
        indices = list(range(min(int(count), len(original))))
    idx = torch.as_tensor(list(indices), dtype=torch.int64)
    if len(idx) == 0:
        raise ValueError("nothing to preview: no indices")

    def chw(images: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(images[idx.numpy()])).permute(0, 3, 1, 2).contiguous()

    orig, pure = chw(original), chw(purified)
    comp = CorruptionCompensation(p_gray, sigma, seed).compensate(pure, idx)
    grid = torch.cat([orig, pure, comp]).float() / 255.0
    if upscale > 1:
        grid = torch.nn.functional.interpolate(grid, scale_factor=int(upscale), mode="nearest")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path, nrow=len(idx), padding=2, pad_value=1.0)
    return path

"""Model-free availability poisons, for demos and tests of the defence.

These need no surrogate model, so they run anywhere in seconds. They are weaker stand-ins for the
optimised poisons of the literature (EM, REM, SEP ...), not substitutes for evaluating against them.
"""
from __future__ import annotations

import numpy as np

from ..data.images import LabelledImages


def classwise_noise(data: LabelledImages, epsilon: float = 8 / 255, seed: int = 0) -> LabelledImages:
    """Class-wise random noise (URP-style): one fixed ±epsilon pattern per class, added to every image
    of that class (L-inf budget ``epsilon`` in [0, 1] units). A network learns the pattern, not the content.
    """
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    rng = np.random.default_rng(seed)
    patterns = rng.choice([-1.0, 1.0], size=(data.num_classes, *data.image_shape)) * round(epsilon * 255)
    poisoned = np.clip(data.images.astype(np.float32) + patterns[data.labels], 0, 255).astype(np.uint8)
    return LabelledImages(poisoned, data.labels.copy(), data.num_classes)


def classwise_patches(data: LabelledImages, epsilon: float = 8 / 255, patch: int = 8, seed: int = 0) -> LabelledImages:
    """Class-wise patch colours (LSP-style): each class gets a grid of ``patch`` x ``patch`` blocks, each
    block a fixed ±epsilon shift per channel. Low-frequency and colour-coded, so it survives crops
    and flips; the image must be divisible into whole patches.
    """
    if not 0 < epsilon <= 1:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    height, width, channels = data.image_shape
    if height % patch or width % patch:
        raise ValueError(f"image size {height}x{width} is not a multiple of patch={patch}")
    rng = np.random.default_rng(seed)
    grid = rng.choice([-1.0, 1.0], size=(data.num_classes, height // patch, width // patch, channels))
    patterns = grid.repeat(patch, axis=1).repeat(patch, axis=2) * round(epsilon * 255)
    poisoned = np.clip(data.images.astype(np.float32) + patterns[data.labels], 0, 255).astype(np.uint8)
    return LabelledImages(poisoned, data.labels.copy(), data.num_classes)

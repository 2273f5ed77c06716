"""Synthetic data for the selection tests (no tests here): a trivially learnable clean task and a poison grayscale removes.

Clean: 4 classes of grey stripe textures (vertical / horizontal x period 4 / 8 pixels, random phase,
pixel noise), invariant to flips and shifts so the proxy's crop + flip keep the classes apart.
Poison: a class-wise colour shift orthogonal to the luma weights, so converting to grayscale undoes it
(up to rounding and clipping) while a network trained on it learns colour instead of stripes.
"""
from __future__ import annotations

import numpy as np

from eclipse_loader.data.images import LabelledImages

LUMA = np.array([19595, 38470, 7471]) / 65536


def stripes(n: int, seed: int, size: int = 16, classes: int = 4) -> LabelledImages:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    yy, xx = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    vertical = (labels % 2 == 0)[:, None, None]
    period = np.where(labels // 2 == 0, 4.0, 8.0)[:, None, None]
    wave = np.sin(2 * np.pi / period * np.where(vertical, xx, yy) + phase)
    base = 128 + 35 * wave + rng.normal(0, 25, (n, size, size))
    images = np.clip(base[..., None] + rng.normal(0, 6, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return LabelledImages(images, labels.astype(np.int64), classes)


def chroma_poison(data: LabelledImages, amplitude: float = 60.0, seed: int = 5) -> LabelledImages:
    rng = np.random.default_rng(seed)
    shifts = []
    for _ in range(data.num_classes):
        v = rng.normal(size=3)
        v -= LUMA * (v @ LUMA) / (LUMA @ LUMA)
        shifts.append(amplitude * v / np.abs(v).max())
    shifted = data.images + np.array(shifts)[data.labels][:, None, None, :]
    return LabelledImages(np.clip(shifted, 0, 255).astype(np.uint8), data.labels, data.num_classes)

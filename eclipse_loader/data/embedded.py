"""The small CIFAR-10 sample shipped with the package (no download needed), for the demo and smoke tests.

3,000 real CIFAR-10 images, class balanced, stored losslessly: ``train`` (2,000, from CIFAR's train
split), ``trusted`` (500, disjoint from ``train``; the defender's clean set) and ``test`` (500, from
CIFAR's test split). Built by ``scripts/make_embedded_dataset.py``.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

from .images import LabelledImages

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EMBEDDED_SPLITS = ("train", "trusted", "test")
_SIDE = 32
_COLUMNS = 50


@lru_cache(maxsize=1)
def _all_images() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import PIL.Image

    assets = resources.files("eclipse_loader") / "assets"
    with (assets / "cifar10_sample.webp").open("rb") as handle:
        atlas = np.asarray(PIL.Image.open(handle).convert("RGB"))
    with (assets / "cifar10_sample_labels.npz").open("rb") as handle, np.load(handle) as meta:
        labels, sizes = meta["labels"].astype(np.int64), meta["split_sizes"]
    rows = atlas.shape[0] // _SIDE
    images = atlas.reshape(rows, _SIDE, _COLUMNS, _SIDE, 3).transpose(0, 2, 1, 3, 4).reshape(-1, _SIDE, _SIDE, 3)
    return np.ascontiguousarray(images), labels, np.cumsum(np.concatenate([[0], sizes]))


def load_embedded(split: str = "train") -> LabelledImages:
    """One split of the embedded CIFAR-10 sample: ``"train"``, ``"trusted"`` or ``"test"``."""
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"embedded split must be one of {EMBEDDED_SPLITS}, got {split!r}")
    images, labels, bounds = _all_images()
    k = EMBEDDED_SPLITS.index(split)
    part = slice(int(bounds[k]), int(bounds[k + 1]))
    return LabelledImages(images[part].copy(), labels[part].copy(), len(CIFAR10_CLASSES))

"""Build `eclipse_loader/assets/cifar10_sample.webp` (+ labels) from the real CIFAR-10 npz.

The package ships this 3,000-image, class-balanced sample so `eclipse-loader demo` runs with no
download. Splits: train 2,000 (200/class, CIFAR train split), trusted 500 (50/class, a disjoint
part of the train split: the defender's sparse clean set), test 500 (50/class, CIFAR test split).
Only bit-exact images are used (the npz's *_exact_mask). Pixels are stored losslessly (WebP).

    python scripts/make_embedded_dataset.py ../shared/data/cifar10.npz
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import PIL.Image

OUT = Path(__file__).resolve().parents[1] / "eclipse_loader" / "assets"
PER_CLASS = {"train": 200, "trusted": 50, "test": 50}
COLUMNS = 50


def balanced(labels: np.ndarray, exact: np.ndarray, per_class: int, skip: int, rng: np.random.Generator) -> np.ndarray:
    chosen = []
    for c in range(10):
        pool = np.flatnonzero((labels == c) & exact)
        chosen.append(rng.permutation(pool)[skip: skip + per_class])
    return rng.permutation(np.concatenate(chosen))


def main(npz: str) -> None:
    d = np.load(npz)
    rng = np.random.default_rng(2024)
    train_idx = balanced(d["train_y"], d["train_exact_mask"], PER_CLASS["train"], 0, np.random.default_rng(1))
    trusted_idx = balanced(d["train_y"], d["train_exact_mask"], PER_CLASS["trusted"], PER_CLASS["train"], np.random.default_rng(1))
    test_idx = balanced(d["test_y"], d["test_exact_mask"], PER_CLASS["test"], 0, rng)
    assert not set(train_idx) & set(trusted_idx)
    images = np.concatenate([d["train_x"][train_idx], d["train_x"][trusted_idx], d["test_x"][test_idx]])
    labels = np.concatenate([d["train_y"][train_idx], d["train_y"][trusted_idx], d["test_y"][test_idx]])
    n = len(images)
    atlas = images.reshape(n // COLUMNS, COLUMNS, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(n // COLUMNS * 32, COLUMNS * 32, 3)
    OUT.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(atlas).save(OUT / "cifar10_sample.webp", lossless=True, quality=100, method=6)
    np.savez_compressed(
        OUT / "cifar10_sample_labels.npz",
        labels=labels.astype(np.uint8),
        split_sizes=np.array([len(train_idx), len(trusted_idx), len(test_idx)]),
        source_indices=np.concatenate([train_idx, trusted_idx, test_idx]),
    )
    print(f"wrote {n} images to {OUT}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/cifar10.npz")

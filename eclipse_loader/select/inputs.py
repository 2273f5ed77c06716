"""Checks on the selection's inputs, and the split of the trusted set into validation and the rest.

The validation images must be unseen by everything that is fitted: the proxy (it trains on the
possibly poisoned set, checked disjoint by image hash) and the candidates (the denoiser: images it
was trained on are excluded by hash). What remains of the trusted set is the *pool* that the
"also train on the trusted images" option mixes in.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..data.images import LabelledImages
from ..data.sparse import image_hashes, select_sparse_indices

MIN_PER_CLASS = 10
MAX_VALIDATION = 2000


def check_inputs(train: LabelledImages, trusted: LabelledImages) -> None:
    """Raise ValueError when ``trusted`` cannot validate defences of ``train``: other classes, other
    image size, or images shared with ``train`` (compared by exact image hash)."""
    if len(train) == 0 or len(trusted) == 0:
        raise ValueError(f"empty input: {len(train)} training and {len(trusted)} trusted images")
    if trusted.image_shape != train.image_shape:
        raise ValueError(f"trusted images are {trusted.image_shape} but training images are {train.image_shape}: "
                         "the trusted set must come from the same distribution (same image size)")
    extra = sorted(set(np.unique(trusted.labels).tolist()) - set(np.unique(train.labels).tolist()))
    if trusted.num_classes != train.num_classes or extra:
        raise ValueError(f"the trusted set has other classes than the training set (trusted: {trusted.num_classes} "
                         f"classes{f', labels {extra} absent from training' if extra else ''}; training: "
                         f"{train.num_classes} classes)")
    train_hashes = set(image_hashes(train).tolist())
    shared = [i for i, h in enumerate(image_hashes(trusted)) if h in train_hashes]
    if shared:
        raise ValueError(f"{len(shared)} of {len(trusted)} trusted images also appear in the training data (first "
                         f"trusted index {shared[0]}): a validation image the proxy trains on cannot validate; "
                         "remove them from one of the two sets")


def split_trusted(trusted: LabelledImages, classes: np.ndarray, seen: Optional[np.ndarray] = None, *,
                  max_validation: int = MAX_VALIDATION, min_per_class: int = MIN_PER_CLASS,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, pool indices) into ``trusted``.

    Validation: class-balanced, at most ``max_validation`` images, drawn from the trusted images not in
    ``seen`` (images the denoiser trained on, as uint8 NHWC). Every class of ``classes`` needs at least
    ``min_per_class`` such images, else ValueError. Pool: every other trusted image.
    """
    unseen = np.ones(len(trusted), dtype=bool)
    if seen is not None and len(seen):
        seen_hashes = set(image_hashes(np.asarray(seen)).tolist())
        unseen = np.array([h not in seen_hashes for h in image_hashes(trusted)], dtype=bool)
    candidates = np.flatnonzero(unseen)
    counts = {int(c): int((trusted.labels[candidates] == c).sum()) for c in classes}
    short = {c: n for c, n in counts.items() if n < min_per_class}
    if short:
        raise ValueError(f"too few trusted images per class for validation: need >= {min_per_class} per class not "
                         f"used to train the denoiser, but class(es) {short} have fewer "
                         f"({int((~unseen).sum())} of {len(trusted)} trusted images were seen by the denoiser)")
    per_class = min(min(counts.values()), max(min_per_class, max_validation // len(classes)))
    in_classes = candidates[np.isin(trusted.labels[candidates], classes)]
    chosen = np.sort(in_classes[select_sparse_indices(trusted.subset(in_classes), count=per_class * len(classes),
                                                      seed=seed)])
    rest = np.setdiff1d(np.arange(len(trusted)), chosen)
    return chosen, rest

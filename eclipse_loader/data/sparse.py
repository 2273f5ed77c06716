"""The sparse clean set D_s that the ECLIPSE denoiser is trained on: choice, overlap check, enlargement.

The paper (§4.1) uses 4% of the training-set size (2,000 CIFAR-10 images), drawn from the same
distribution as, but not from, the poisoned training set. The released code drew those images from
the CIFAR-10 *test* set, which is also the set the victim is scored on; `check_overlap` exists to
catch exactly that.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from typing import Literal, Optional, Union

import numpy as np

from .images import LabelledImages, image_blocks, is_lazy

OverlapPolicy = Literal["refuse", "warn"]
ImagesLike = Union[LabelledImages, np.ndarray]

DEFAULT_FRACTION = 0.04
"""Paper default: the sparse set holds 4% of the training-set size (B/N)."""

_log = logging.getLogger(__name__)


class SparseSetOverlapError(ValueError):
    """The sparse clean set shares images with the evaluation set."""


def sparse_set_size(
    *, count: Optional[int] = None, fraction: Optional[float] = None, train_size: Optional[int] = None
) -> int:
    """How many images the sparse set holds: ``count``, or ``round(fraction * train_size)``.

    Args:
        count: explicit size; exclusive with ``fraction``.
        fraction: share of ``train_size`` (default 0.04 when ``count`` is not given).
        train_size: size of the (poisoned) training set the fraction refers to; required
            unless ``count`` is given.
    """
    if count is not None and fraction is not None:
        raise ValueError(f"give count or fraction, not both (count={count}, fraction={fraction})")
    if count is not None:
        if int(count) != count or count < 1:
            raise ValueError(f"count must be a positive integer, got {count!r}")
        return int(count)
    fraction = DEFAULT_FRACTION if fraction is None else float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if train_size is None or int(train_size) != train_size or train_size < 1:
        raise ValueError(f"fraction needs a positive integer train_size, got {train_size!r}")
    size = int(round(fraction * int(train_size)))
    if size < 1:
        raise ValueError(f"fraction {fraction} of train_size {train_size} rounds to 0 images")
    return size


def select_sparse_indices(
    data: LabelledImages,
    *,
    count: Optional[int] = None,
    fraction: Optional[float] = None,
    train_size: Optional[int] = None,
    seed: int = 0,
) -> np.ndarray:
    """Choose a class-balanced, seeded sparse clean set from the trusted pool ``data``.

    Every class present in ``data`` gets ``size // num_present_classes`` images; the remainder goes
    to randomly chosen classes (one extra each). Within a class the images are drawn uniformly
    without replacement. The result depends only on ``(data.labels, size, seed)``.

    Args:
        data: trusted clean pool (e.g. a held-out part of the training split).
        count: sparse-set size; or give ``fraction`` of ``train_size`` instead.
        fraction: default 0.04 (paper) when ``count`` is not given.
        train_size: size of the training set ``fraction`` refers to (default ``len(data)``).
        seed: seed of the draw.

    Returns:
        Sorted int64 indices into ``data``.

    Raises:
        ValueError: the size is invalid, or some class has fewer images than its share.
    """
    if train_size is None and count is None:
        train_size = len(data)
    size = sparse_set_size(count=count, fraction=fraction, train_size=train_size)
    if size > len(data):
        raise ValueError(f"sparse set of {size} images requested from a pool of only {len(data)}")
    classes = np.unique(data.labels)
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), size // len(classes), dtype=np.int64)
    per_class[rng.choice(len(classes), size % len(classes), replace=False)] += 1
    chosen = []
    for cls, k in zip(classes, per_class):
        members = np.flatnonzero(data.labels == cls)
        if k > len(members):
            raise ValueError(
                f"class {int(cls)} has {len(members)} images but the balanced sparse set needs {int(k)}"
            )
        chosen.append(rng.choice(members, int(k), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def image_hashes(images: ImagesLike) -> np.ndarray:
    """sha1 hex digest of each image's raw bytes (uint8 HWC), as an array of str. The images are read a
    block at a time (`image_blocks`), so a memory-mapped or lazily decoded source is never held whole."""
    array = images.images if isinstance(images, LabelledImages) else images
    if not is_lazy(array):
        array = np.asarray(array)
    return np.array([hashlib.sha1(img.tobytes()).hexdigest() for _, block in image_blocks(array) for img in block])


def check_overlap(sparse: ImagesLike, eval_set: ImagesLike, policy: OverlapPolicy = "refuse") -> np.ndarray:
    """Compare the sparse set with the evaluation set by exact image hash.

    Args:
        sparse: the sparse clean set (images or `LabelledImages`).
        eval_set: the set the victim model will be scored on.
        policy: ``"refuse"`` raises on any shared image; ``"warn"`` emits a `UserWarning` and a
            log record at WARNING level, and carries on.

    Returns:
        Indices into ``sparse`` of the images also present in ``eval_set`` (empty if none).

    Raises:
        SparseSetOverlapError: overlap found and ``policy="refuse"``.
    """
    if policy not in ("refuse", "warn"):
        raise ValueError(f"policy must be 'refuse' or 'warn', got {policy!r}")
    eval_hashes = set(image_hashes(eval_set).tolist())
    sparse_hashes = image_hashes(sparse)
    shared = np.flatnonzero(np.fromiter((h in eval_hashes for h in sparse_hashes), bool, len(sparse_hashes)))
    if len(shared):
        message = (
            f"{len(shared)} of {len(sparse_hashes)} sparse-set images also appear in the evaluation set "
            f"(first sparse index {int(shared[0])}); training the denoiser on evaluation images leaks "
            "them into the defence (the paper's code drew its sparse set from the CIFAR-10 test set). "
            "Draw the sparse set from a held-out part of the training split instead."
        )
        if policy == "refuse":
            raise SparseSetOverlapError(message + " Pass policy='warn' to proceed anyway.")
        warnings.warn("SPARSE/EVAL OVERLAP: " + message, UserWarning, stacklevel=2)
        _log.warning("SPARSE/EVAL OVERLAP: %s", message)
    return shared.astype(np.int64)


def enlarge_indices(indices: np.ndarray, m: int = 4) -> np.ndarray:
    """Duplicate enlargement D_A = D_s ∪ R(D_s, M): the indices repeated ``m + 1`` times in all."""
    if int(m) != m or m < 0:
        raise ValueError(f"m must be a non-negative integer, got {m!r}")
    return np.tile(np.asarray(indices, dtype=np.int64), int(m) + 1)


def duplicate_enlarge(data: LabelledImages, m: int = 4) -> LabelledImages:
    """The paper's duplicate enlargement (M=4): ``data`` followed by ``m`` plain copies, no augmentation.

    With uniform shuffled sampling this barely changes training (each image keeps the same
    sampling probability); it is provided for fidelity to the paper.
    """
    return data.subset(enlarge_indices(np.arange(len(data)), m))

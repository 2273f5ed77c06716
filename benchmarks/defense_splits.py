"""The harness's data: a protocol's (train, sparse, test) splits, pairwise disjoint, and the npz cache."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from _common import CIFAR, log
from protocols import Protocol

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.data.sparse import check_overlap, select_sparse_indices

DATA = CIFAR
"""The full CIFAR-10 (``../shared/data/cifar10.npz``): the default ``--data``."""


def load_splits(protocol: Protocol, seed: int, splits: Optional[Path] = None, data: Path = DATA
                ) -> tuple[LabelledImages, LabelledImages, LabelledImages]:
    """(training set to poison, sparse clean set, test set), pairwise disjoint.

    ``splits``: an npz written by `save_splits` (to carry a protocol's images to another machine)
    instead of drawing them from the full CIFAR-10 file ``data`` (train_x/train_y/test_x/test_y).
    """
    if splits is not None:
        with np.load(splits, allow_pickle=False) as z:
            parts = tuple(LabelledImages(z[f"{k}_x"], z[f"{k}_y"].astype(np.int64), 10) for k in ("train", "sparse", "test"))
        check_overlap(parts[1].images, parts[0].images, "refuse")
        check_overlap(parts[1].images, parts[2].images, "refuse")
        return parts  # type: ignore[return-value]
    if not data.is_file():
        raise SystemExit(f"CIFAR-10 not found at {data} (see ../shared/data/README)")
    raw = np.load(data, allow_pickle=False)
    train = LabelledImages(raw["train_x"], raw["train_y"].astype(np.int64), 10)
    test = LabelledImages(raw["test_x"], raw["test_y"].astype(np.int64), 10)
    if protocol.train_size is not None:
        keep = select_sparse_indices(train, count=protocol.train_size, seed=seed)
        rest = np.setdiff1d(np.arange(len(train)), keep)
        train, pool = train.subset(keep), train.subset(rest)
    else:
        pool = None
    if protocol.sparse_from == "train":
        assert pool is not None, "sparse_from='train' needs a training subset"
        sparse = pool.subset(select_sparse_indices(pool, count=protocol.sparse_size, seed=seed + 1))
    else:
        chosen = select_sparse_indices(test, count=protocol.sparse_size, seed=seed + 1)
        sparse = test.subset(chosen)
        test = test.subset(np.setdiff1d(np.arange(len(test)), chosen))
    if protocol.test_size is not None:
        test = test.subset(select_sparse_indices(test, count=protocol.test_size, seed=seed + 2))
    check_overlap(sparse.images, train.images, "refuse")
    check_overlap(sparse.images, test.images, "refuse")
    return train, sparse, test


def save_splits(path: Path, protocol: Protocol, seed: int, test_size: Optional[int] = None) -> None:
    """Write a protocol's (train, sparse, test) images to one compressed npz for `load_splits`."""
    train, sparse, test = load_splits(protocol, seed)
    if test_size is not None and test_size < len(test):
        test = test.subset(select_sparse_indices(test, count=test_size, seed=seed + 3))
    arrays = {}
    for key, part in (("train", train), ("sparse", sparse), ("test", test)):
        arrays[f"{key}_x"], arrays[f"{key}_y"] = part.images, part.labels
    np.savez_compressed(path, **arrays)


def save_npz(path: Path, data: LabelledImages) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, images=data.images, labels=data.labels)
    tmp.replace(path)


def cached(path: Path, make: Callable[[], LabelledImages],
           on_made: Optional[Callable[[float], None]] = None) -> LabelledImages:
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            return LabelledImages(z["images"], z["labels"].astype(np.int64), 10)
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = make()
    save_npz(path, data)
    seconds = time.perf_counter() - start
    log(f"  wrote {path.parent.name}/{path.name} in {seconds:.0f} s")
    if on_made is not None:
        on_made(seconds)
    return data

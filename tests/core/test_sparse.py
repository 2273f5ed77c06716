"""Sparse clean set: class balance, seeding, sizes, overlap refusal, duplicate enlargement."""
from pathlib import Path

import numpy as np
import pytest

from eclipse_loader.data.images import as_labelled_images
from eclipse_loader.data.sparse import (
    SparseSetOverlapError,
    check_overlap,
    duplicate_enlarge,
    image_hashes,
    select_sparse_indices,
    sparse_set_size,
)



@pytest.fixture(scope="module")
def cifar():
    from ..conftest import embedded_cifar

    archive = embedded_cifar()  # 2,500 train + trusted images (250 per class), 500 test images
    # drop 100 images of class 0 so the pool's class frequencies are not balanced: 2,400 images
    keep = np.ones(len(archive["train_y"]), bool)
    keep[np.flatnonzero(archive["train_y"] == 0)[:100]] = False
    train = as_labelled_images(archive["train_x"][keep], archive["train_y"][keep], 10)
    test = as_labelled_images(archive["test_x"], archive["test_y"], 10)
    return train, test


def test_class_balanced_and_seeded(cifar):
    train, _ = cifar
    idx = select_sparse_indices(train, count=200, seed=3)
    assert len(idx) == 200 and len(np.unique(idx)) == 200
    assert np.all(np.diff(idx) > 0)
    counts = np.bincount(train.labels[idx], minlength=10)
    assert counts.tolist() == [20] * 10
    # the natural class frequencies of the slice are not balanced, so balance is not an accident
    assert np.bincount(train.labels, minlength=10).std() > 0
    np.testing.assert_array_equal(idx, select_sparse_indices(train, count=200, seed=3))
    assert not np.array_equal(idx, select_sparse_indices(train, count=200, seed=4))


def test_remainder_spread_over_classes(cifar):
    train, _ = cifar
    counts = np.bincount(train.labels[select_sparse_indices(train, count=205, seed=0)], minlength=10)
    assert counts.sum() == 205 and set(counts.tolist()) == {20, 21} and (counts == 21).sum() == 5


def test_default_fraction_is_four_percent(cifar):
    train, _ = cifar
    assert sparse_set_size(train_size=50000) == 2000
    assert len(select_sparse_indices(train, train_size=5000)) == 200
    assert len(select_sparse_indices(train)) == 96  # 4% of the 2,400-image pool
    with pytest.raises(ValueError, match="not both"):
        sparse_set_size(count=10, fraction=0.1, train_size=100)


def test_class_too_small_is_refused(cifar):
    train, _ = cifar
    few = train.subset(np.flatnonzero(train.labels != 3)[:500].tolist() + np.flatnonzero(train.labels == 3)[:2].tolist())
    with pytest.raises(ValueError, match="class 3 has 2 images"):
        select_sparse_indices(few, count=100, seed=0)


def test_overlap_refused_and_warned(cifar):
    train, test = cifar
    leaky = test.subset(select_sparse_indices(test, count=50, seed=0))  # the paper's choice: test images
    with pytest.raises(SparseSetOverlapError, match="50 of 50"):
        check_overlap(leaky, test)
    with pytest.warns(UserWarning, match="OVERLAP"):
        shared = check_overlap(leaky, test, policy="warn")
    assert len(shared) == 50
    clean = train.subset(select_sparse_indices(train, count=50, seed=0))
    assert len(check_overlap(clean, test)) == 0
    # a single shared image is enough to refuse
    mixed = as_labelled_images(np.concatenate([clean.images, test.images[7:8]]), np.zeros(51, np.int64), 10)
    with pytest.raises(SparseSetOverlapError, match="first sparse index 50"):
        check_overlap(mixed, test)


def test_image_hashes_are_sha1_of_bytes(cifar):
    import hashlib

    train, _ = cifar
    assert image_hashes(train.images[:2])[1] == hashlib.sha1(train.images[1].tobytes()).hexdigest()


def test_duplicate_enlargement(cifar):
    train, _ = cifar
    small = train.subset(np.arange(10))
    big = duplicate_enlarge(small, m=4)
    assert len(big) == 50
    np.testing.assert_array_equal(big.images[30:40], small.images)
    np.testing.assert_array_equal(big.labels[:10], big.labels[40:])
    with pytest.raises(ValueError):
        duplicate_enlarge(small, m=-1)

"""FFCV and torch loaders: same samples, same compensation, epochs redrawn, sharding, no leaked threads."""
from __future__ import annotations

import threading

import numpy as np
import torch

from eclipse_loader.loading.config import AugmentConfig
from eclipse_loader.loading.torch_loader import TorchEpochLoader, epoch_order, flip_and_translate

from .conftest import requires_ffcv

NO_GEOMETRY = AugmentConfig(flip=False, translate_padding=0)


@requires_ffcv
def test_ffcv_and_torch_loaders_deliver_identical_compensated_batches(small_beton, cifar_small):
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader

    ffcv_loader = make_ffcv_loader(small_beton, 128, augment=NO_GEOMETRY, seed=3)
    torch_loader = TorchEpochLoader(cifar_small, 128, augment=NO_GEOMETRY, seed=3)
    epochs = []
    for _ in range(2):
        a = torch.cat([x for x, _ in ffcv_loader])
        b = torch.cat([x for x, _ in torch_loader])
        assert a.shape == (600, 3, 32, 32) and torch.equal(a, b)
        epochs.append(a)
    assert not torch.equal(epochs[0], epochs[1])  # compensation redrawn each epoch
    plain = torch.from_numpy(cifar_small.images).permute(0, 3, 1, 2).float() / 255
    evaluation = torch.cat([x for x, _ in make_ffcv_loader(small_beton, 128)])
    assert torch.equal(evaluation, plain)  # no augmentation, no compensation
    ffcv_loader.close()


@requires_ffcv
def test_ffcv_loader_clamps_workers_and_does_not_leak_threads(small_beton):
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader

    loader = make_ffcv_loader(small_beton, 64, augment=AugmentConfig(), shuffle=True, drop_last=True, num_workers=64)
    before = threading.active_count()
    for _ in range(4):
        it = iter(loader)
        next(it)  # abandon the epoch early, as Lightning's limit_train_batches does
    assert threading.active_count() <= before + 1
    loader.close()
    assert threading.active_count() <= before


def test_torch_loader_order_shards_and_resumes(cifar_small):
    order0 = epoch_order(10, seed=1, epoch=0, shuffle=True)
    assert sorted(order0) == list(range(10)) and not np.array_equal(order0, epoch_order(10, 1, 1, True))
    shards = [epoch_order(10, 1, 0, True, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(np.concatenate(shards)) == set(range(10))
    loader = TorchEpochLoader(cifar_small, 100, augment=AugmentConfig(), shuffle=True, seed=4)
    first = [y for _, y in loader]
    second = [y for _, y in loader]
    loader.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(second, [y for _, y in loader]))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))


def test_flip_and_translate_are_per_sample_and_keep_content():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.int64).view(2, 3, 6, 6).to(torch.uint8)
    keys = torch.tensor([12345, 999])
    out = flip_and_translate(images, keys, flip=True, padding=0)
    for i in range(2):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(-1))
    shifted = flip_and_translate(images, keys, flip=False, padding=2)
    assert shifted.shape == images.shape
    nonzero = shifted[shifted > 0]
    assert set(nonzero.tolist()) <= set(images.flatten().tolist())

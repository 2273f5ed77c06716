"""FFCV and torch loaders: same samples, same compensation, epochs redrawn, sharding, no leaked threads;
the torch loader's whole-batch augmentation against a per-sample reference."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from eclipse_loader.compensation import counter_rng as rng
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.loading.config import AugmentConfig
from eclipse_loader.loading.torch_loader import TorchEpochLoader, epoch_order, flip_and_translate

from ..conftest import requires_ffcv

NO_GEOMETRY = AugmentConfig(flip=False, translate_padding=0)
PAPER = AugmentConfig(p_gray=0.4, sigma=0.05)


@pytest.fixture(scope="module")
def sample() -> LabelledImages:
    """600 images of the embedded CIFAR-10 sample."""
    data = load_embedded("train")
    return LabelledImages(data.images[:600], data.labels[:600], data.num_classes)


@pytest.fixture(scope="module")
def sample_beton(tmp_path_factory, sample):
    from eclipse_loader.storage.beton import write_beton

    return write_beton(tmp_path_factory.mktemp("beton") / "train.beton", sample, progress=False)


@requires_ffcv
def test_ffcv_and_torch_loaders_deliver_identical_compensated_batches(sample_beton, sample):
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader

    ffcv_loader = make_ffcv_loader(sample_beton, 128, augment=NO_GEOMETRY, seed=3)
    torch_loader = TorchEpochLoader(sample, 128, augment=NO_GEOMETRY, seed=3)
    epochs = []
    for _ in range(2):
        a = torch.cat([x for x, _ in ffcv_loader])
        b = torch.cat([x for x, _ in torch_loader])
        assert a.shape == (600, 3, 32, 32) and torch.equal(a, b)
        epochs.append(a)
    assert not torch.equal(epochs[0], epochs[1])  # compensation redrawn each epoch
    plain = torch.from_numpy(sample.images).permute(0, 3, 1, 2).float() / 255
    evaluation = torch.cat([x for x, _ in make_ffcv_loader(sample_beton, 128)])
    assert torch.equal(evaluation, plain)  # no augmentation, no compensation
    ffcv_loader.close()


@requires_ffcv
def test_torch_loader_compensation_equals_the_ffcv_operation_on_shuffled_epochs(sample):
    """The batched torch path against CompensateFFCV run by hand on the same indices and epoch."""
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    loader = TorchEpochLoader(sample, 100, augment=AugmentConfig(flip=False, translate_padding=0, p_gray=0.4, sigma=0.05),
                              shuffle=True, seed=9)
    op = CompensateFFCV(0.4, 0.05, seed=9)
    op.declare_state_and_memory(State(True, torch.device("cpu"), (32, 32, 3), np.dtype("u1")))
    fn = Compiler.compile(op.generate_code())
    for epoch in (0, 1):
        order = epoch_order(600, 9, epoch, True)
        op.set_epoch(epoch)
        expected = fn(sample.images[order], np.empty((600, 32, 32, 3), np.uint8), order.astype(np.uint64))
        got = torch.cat([x for x, _ in loader]) * 255
        assert torch.equal(got.round().to(torch.uint8).permute(0, 2, 3, 1), torch.from_numpy(expected))


@requires_ffcv
def test_ffcv_loader_clamps_workers_and_does_not_leak_threads(sample_beton):
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader

    loader = make_ffcv_loader(sample_beton, 64, augment=AugmentConfig(), shuffle=True, drop_last=True, num_workers=64)
    before = threading.active_count()
    for _ in range(4):
        it = iter(loader)
        next(it)  # abandon the epoch early, as Lightning's limit_train_batches does
    assert threading.active_count() <= before + 1
    loader.close()
    assert threading.active_count() <= before


def test_torch_loader_order_shards_and_resumes(sample):
    order0 = epoch_order(10, seed=1, epoch=0, shuffle=True)
    assert sorted(order0) == list(range(10)) and not np.array_equal(order0, epoch_order(10, 1, 1, True))
    shards = [epoch_order(10, 1, 0, True, rank=r, world_size=3) for r in range(3)]
    assert all(len(s) == 4 for s in shards) and set(np.concatenate(shards)) == set(range(10))
    loader = TorchEpochLoader(sample, 100, augment=AugmentConfig(), shuffle=True, seed=4)
    first = [y for _, y in loader]
    second = [y for _, y in loader]
    loader.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(second, [y for _, y in loader]))
    assert not all(torch.equal(a, b) for a, b in zip(first, second))
    assert len(TorchEpochLoader(sample, 256, drop_last=True)) == 2 == len(list(TorchEpochLoader(sample, 256, drop_last=True)))
    assert [len(y) for _, y in TorchEpochLoader(sample, 256)] == [256, 256, 88]


def test_torch_loader_batches_do_not_depend_on_batch_size_workers_or_batching(sample):
    config = dict(augment=PAPER, shuffle=True, seed=2)
    reference = torch.cat([x for x, _ in TorchEpochLoader(sample, 600, **config)])
    for other in (TorchEpochLoader(sample, 37, **config), TorchEpochLoader(sample, 256, num_workers=1, **config)):
        assert torch.equal(torch.cat([x for x, _ in other]), reference)


def test_torch_loader_batch_transform_runs_before_the_augmentation_with_indices_and_epoch(sample):
    seen = []

    def invert(batch: torch.Tensor, idx: torch.Tensor, epoch: int) -> torch.Tensor:
        seen.append((idx.clone(), epoch))
        return 255 - batch

    config = dict(augment=PAPER, shuffle=True, seed=3)
    inverted = LabelledImages(255 - sample.images, sample.labels, sample.num_classes)
    loader = TorchEpochLoader(sample, 128, batch_transform=invert, **config)
    reference = TorchEpochLoader(inverted, 128, **config)
    for _ in range(2):  # epoch 1 too: the transform sees the loader's epoch
        assert torch.equal(torch.cat([x for x, _ in loader]), torch.cat([x for x, _ in reference]))
    assert {e for _, e in seen} == {0, 1}
    order = torch.cat([i for i, e in seen if e == 1]).numpy()
    assert np.array_equal(order, epoch_order(len(sample), 3, 1, True))


def _reference_flip_translate(image: np.ndarray, key: int, flip: bool, padding: int) -> np.ndarray:
    """One CHW image, the slow obvious way: flip if bit 0 of the flip hash, pad with zeros, crop at
    (dy, dx) drawn from their hashes."""
    if flip and rng.hash32(key ^ 0x1B873593) & 1:
        image = image[:, :, ::-1]
    if padding == 0:
        return image
    padded = np.pad(image, ((0, 0), (padding, padding), (padding, padding)))
    dy = rng.hash32(key ^ 0x27D4EB2F) % (2 * padding + 1)
    dx = rng.hash32(key ^ 0x165667B1) % (2 * padding + 1)
    return padded[:, dy:dy + image.shape[1], dx:dx + image.shape[2]]


@pytest.mark.parametrize("flip,padding", [(True, 0), (False, 2), (True, 4)])
def test_flip_and_translate_equal_the_per_sample_reference(sample, flip, padding):
    images = torch.from_numpy(sample.images[:200]).permute(0, 3, 1, 2)
    keys = rng.hash32(torch.arange(200) * 7919 + 11)
    out = flip_and_translate(images, keys, flip=flip, padding=padding)
    expected = np.stack([_reference_flip_translate(im, int(k), flip, padding) for im, k in zip(images.numpy(), keys)])
    assert out.shape == images.shape and np.array_equal(out.numpy(), expected)
    changed = (out != images).flatten(1).any(1).float().mean().item()
    assert changed > (0.4 if padding == 0 else 0.85)  # about half flipped; almost all shifted
    assert torch.equal(flip_and_translate(images.contiguous(), keys, flip, padding), out)  # any memory layout

"""The pure-torch loader: same samples, order rule, augmentation and compensation as the FFCV loader.

Used where ffcv cannot be imported (Windows, macOS), by plain-PyTorch users, and for in-memory
datasets (CIFAR-size) whose augmentation should run on the training device. The data is held in memory
(`LabelledImages`, optionally copied to the device once); each batch is gathered, flipped, translated,
compensated and scaled as a whole (`batch_augment`), on the device when one is given. Flip and
translation are seeded from ``(seed, epoch, index)`` (FFCV's own flip/translate ops are unseeded);
the compensation is bit-identical to the FFCV Operation.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Optional, Union

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data.images import LabelledImages
from .batch_augment import Normalizer, augment_batch, flip_and_translate
from .config import AugmentConfig, Normalization, resolve_normalization

__all__ = ["BatchTransform", "SetEpochRelay", "TorchEpochLoader", "epoch_order", "flip_and_translate"]

#: a defence's extra per-batch step: ``(uint8 NCHW batch, dataset indices, epoch) -> uint8 batch``
BatchTransform = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Indices this rank visits in ``epoch``: FFCV's rule (``default_rng(seed + epoch).permutation``),
    padded by repetition and strided across ranks like ``DistributedSampler`` when ``world_size > 1``."""
    order = np.random.default_rng(seed + epoch).permutation(num_samples) if shuffle else np.arange(num_samples)
    if world_size > 1:
        total = math.ceil(num_samples / world_size) * world_size
        order = np.concatenate([order, order[: total - num_samples]])[rank::world_size]
    return order


class _BatchMaker:
    """Gathers, augments and scales the batch of given dataset indices (picklable for DataLoader workers)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: Optional[AugmentConfig], seed: int,
                 epoch: int, normalization: Normalization, batch_transform: Optional[BatchTransform] = None) -> None:
        self.images, self.labels = images, labels  # images: (N, H, W, 3) uint8, contiguous
        self.augment, self.seed, self.epoch, self.batch_transform = augment, seed, epoch, batch_transform
        self.scale = Normalizer(normalization, images.device)

    def __call__(self, indices: Union[list[int], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64, device=self.images.device)
        n, h, w, c = self.images.shape
        # rows of 3 * H * W bytes: index_select copies each image in one piece (uint8 NCHW indexing goes byte by byte)
        batch = self.images.view(n, -1).index_select(0, idx).view(-1, h, w, c).permute(0, 3, 1, 2)
        if self.batch_transform is not None:  # a defence's own per-batch step (e.g. RSK+FF), before crop/flip
            batch = self.batch_transform(batch, idx, self.epoch)
        if self.augment is not None:
            batch = augment_batch(batch, idx, self.augment, self.seed, self.epoch)
        return self.scale(batch), self.labels.index_select(0, idx)


class SetEpochRelay:
    """Not a sampler: the object Lightning finds at a shuffled loader's ``.sampler`` and calls ``set_epoch`` on;
    it forwards the call to the loader, whose order is its own (`epoch_order`)."""

    def __init__(self, loader: object) -> None:
        self.loader = loader

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)


class TorchEpochLoader:
    """An epoch-aware loader over in-memory data yielding ``(float images NCHW, int64 labels)``.

    Args:
        data: the samples.
        batch_size: per-rank batch size.
        augment: training augmentation and compensation, or ``None`` for evaluation (no augmentation).
        normalize: the float conversion (default: ``augment``'s mean/std, else [0, 1] floats).
        shuffle, drop_last: as in ``DataLoader``.
        seed: base seed of order, augmentation and compensation.
        rank, world_size: shard for distributed training (padded like ``DistributedSampler``).
        num_workers: ``DataLoader`` worker processes that build batches on the CPU (0: build them in
            this process, on ``device``).
        batch_transform: ``f(uint8 NCHW batch, dataset indices, epoch) -> uint8 batch``, a defence's extra
            per-batch step run before the augmentation (e.g. `eclipse_loader.select.augment.rsk_ff_keyed`);
            it must be keyed by index and epoch like the other draws for the values to stay independent
            of batch size and workers.
        device: where batches are built and returned (default CPU). With ``num_workers=0`` the whole
            dataset is copied there once and every operation runs there (a GPU: airbench-style loading);
            with workers, batches are built on the CPU and moved.

    Images come out channels-last in memory (like FFCV's ``ToTorchImage``); the values do not depend
    on ``device``, ``num_workers`` or ``batch_size``.
    """

    def __init__(
        self,
        data: LabelledImages,
        batch_size: int,
        augment: Optional[AugmentConfig] = None,
        normalize: Optional[Normalization] = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        device: Union[str, torch.device, None] = None,
        batch_transform: Optional[BatchTransform] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.device = torch.device(device or "cpu")
        build_on = torch.device("cpu") if num_workers > 0 else self.device
        self.images = torch.from_numpy(np.ascontiguousarray(data.images)).to(build_on)
        self.labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64)).to(build_on)
        self.batch_size, self.augment = batch_size, augment
        self.normalization = resolve_normalization(normalize, augment)
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.batch_transform = batch_transform
        self.next_epoch = 0
        if shuffle:  # Lightning calls `.sampler.set_epoch(epoch)` on shuffled loaders
            self.sampler, self.batch_sampler = SetEpochRelay(self), None

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (order and all random draws follow it)."""
        self.next_epoch = int(epoch)

    def __len__(self) -> int:
        per_rank = len(epoch_order(len(self.labels), 0, 0, False, self.rank, self.world_size))
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._run_epoch()

    def _run_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the epoch is read at the first batch, so an iter() that is never advanced
        # (Lightning makes some before calling set_epoch) does not consume an epoch.
        epoch = self.next_epoch
        self.next_epoch += 1
        order = epoch_order(len(self.labels), self.seed, epoch, self.shuffle, self.rank, self.world_size)
        make = _BatchMaker(self.images, self.labels, self.augment, self.seed, epoch, self.normalization,
                           self.batch_transform)
        if self.num_workers == 0:
            order_t = torch.from_numpy(order).to(self.device)
            stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
            for start in range(0, stop, self.batch_size):
                yield make(order_t[start:start + self.batch_size])
            return
        batches = DataLoader(order.tolist(), batch_size=self.batch_size, shuffle=False, drop_last=self.drop_last,
                             collate_fn=make, num_workers=self.num_workers, pin_memory=self.device.type == "cuda")
        for images, labels in batches:
            yield images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Nothing to release (present for parity with the FFCV loader)."""

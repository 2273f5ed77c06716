"""The pure-torch loader: same samples, order rule, augmentation and compensation as the FFCV loader.

Used where ffcv cannot be imported (Windows, macOS) and by plain-PyTorch users. Data is held in memory
(`LabelledImages`); each epoch builds a ``torch.utils.data.DataLoader`` over this rank's indices, and a
collate function augments the whole batch at once. Flip and translation are seeded from
``(seed, epoch, index)`` (FFCV's own flip/translate ops are unseeded); the compensation is bit-identical
to the FFCV Operation.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..compensation import counter_rng as rng
from ..compensation.functional import compensate_batch
from ..data.images import LabelledImages
from .config import AugmentConfig

_FLIP_STREAM, _SHIFT_Y_STREAM, _SHIFT_X_STREAM = 0x1B873593, 0x27D4EB2F, 0x165667B1


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Indices this rank visits in ``epoch``: FFCV's rule (``default_rng(seed + epoch).permutation``),
    padded by repetition and strided across ranks like ``DistributedSampler`` when ``world_size > 1``."""
    order = np.random.default_rng(seed + epoch).permutation(num_samples) if shuffle else np.arange(num_samples)
    if world_size > 1:
        total = math.ceil(num_samples / world_size) * world_size
        order = np.concatenate([order, order[: total - num_samples]])[rank::world_size]
    return order


def flip_and_translate(images: torch.Tensor, keys: torch.Tensor, flip: bool, padding: int) -> torch.Tensor:
    """Per-sample horizontal flip (p=0.5) and zero-filled shift of up to ``padding`` pixels, keyed by ``keys``."""
    out = images
    if flip:
        do_flip = (rng.hash32(keys ^ _FLIP_STREAM) & 1).bool().view(-1, 1, 1, 1)
        out = torch.where(do_flip, out.flip(-1), out)
    if padding > 0:
        b, _, h, w = out.shape
        padded = torch.nn.functional.pad(out, (padding, padding, padding, padding))
        dy = rng.hash32(keys ^ _SHIFT_Y_STREAM) % (2 * padding + 1)
        dx = rng.hash32(keys ^ _SHIFT_X_STREAM) % (2 * padding + 1)
        rows = (dy.view(b, 1) + torch.arange(h, device=out.device)).view(b, 1, h, 1).expand(b, out.shape[1], h, w + 2 * padding)
        cols = (dx.view(b, 1) + torch.arange(w, device=out.device)).view(b, 1, 1, w).expand(b, out.shape[1], h, w)
        out = padded.gather(2, rows).gather(3, cols)
    return out


class _IndexedImages:
    """The data as uint8 CHW / int64 tensors; the DataLoader iterates indices and the collate gathers."""

    def __init__(self, data: LabelledImages) -> None:
        self.images = torch.from_numpy(data.images).permute(0, 3, 1, 2)  # a view, no copy
        self.labels = torch.from_numpy(data.labels)

    def __len__(self) -> int:
        return len(self.labels)


class _AugmentingCollate:
    def __init__(self, dataset: _IndexedImages, augment: Optional[AugmentConfig], seed: int, epoch: int, normalize: AugmentConfig) -> None:
        self.dataset, self.augment, self.seed, self.epoch = dataset, augment, seed, epoch
        mean, std = normalize.scale
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def __call__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.int64)
        images = self.dataset.images[idx]
        if self.augment is not None:
            keys = rng.sample_key(self.seed, self.epoch, idx)
            images = flip_and_translate(images, rng.hash32(keys ^ 0x7F4A7C15), self.augment.flip, self.augment.translate_padding)
            if self.augment.compensate:
                images = compensate_batch(images, idx, p_gray=self.augment.p_gray, sigma=self.augment.sigma, seed=self.seed, epoch=self.epoch)
        return (images.float() - self.mean) / self.std, self.dataset.labels[idx]


class EpochSampler:
    """The ``.sampler`` Lightning finds on a shuffled loader: forwards ``set_epoch`` to the loader."""

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
        normalize: a config whose ``mean``/``std`` are used (defaults to [0, 1] scaling).
        shuffle, drop_last: as in ``DataLoader``.
        seed: base seed of order, augmentation and compensation.
        rank, world_size: shard for distributed training (padded like ``DistributedSampler``).
        num_workers: ``DataLoader`` worker processes (0: augment in the main process).
    """

    def __init__(
        self,
        data: LabelledImages,
        batch_size: int,
        augment: Optional[AugmentConfig] = None,
        normalize: Optional[AugmentConfig] = None,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.dataset = _IndexedImages(data)
        self.batch_size, self.augment, self.normalize = batch_size, augment, normalize or augment or AugmentConfig()
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.rank, self.world_size, self.num_workers = rank, world_size, num_workers
        self.next_epoch = 0
        if shuffle:  # Lightning calls `.sampler.set_epoch(epoch)` on shuffled loaders
            self.sampler, self.batch_sampler = EpochSampler(self), None

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (order and all random draws follow it)."""
        self.next_epoch = int(epoch)

    def __len__(self) -> int:
        per_rank = len(epoch_order(len(self.dataset), 0, 0, False, self.rank, self.world_size))
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._run_epoch()

    def _run_epoch(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # A generator: the epoch is read at the first batch, so an iter() that is never advanced
        # (Lightning makes some before calling set_epoch) does not consume an epoch.
        epoch = self.next_epoch
        self.next_epoch += 1
        order = epoch_order(len(self.dataset), self.seed, epoch, self.shuffle, self.rank, self.world_size)
        collate = _AugmentingCollate(self.dataset, self.augment, self.seed, epoch, self.normalize)
        yield from DataLoader(
            order.tolist(), batch_size=self.batch_size, shuffle=False, drop_last=self.drop_last,
            collate_fn=collate, num_workers=self.num_workers,
        )

    def close(self) -> None:
        """Nothing to release (present for parity with the FFCV loader)."""

"""FFCV loaders over an (image, label) beton: pipelines for training and evaluation, and a wrapper
that makes an FFCV `Loader` epoch-aware and leak-free under Lightning.

Training pipeline: decode, flip, translate, `CompensateFFCV`, to tensor (optionally on CUDA), CHW,
float, normalise. Evaluation pipeline: decode, to tensor, CHW, float, normalise.

Every epoch starts through `eclipse_loader.storage.ffcv_epochs.start_epoch`, which handles two
FFCV 1.0.2 traps (inference-mode buffers under Lightning's validate/test/predict; a dead worker
thread leaving the consumer waiting forever).
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional, Sequence, Union

import numba
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.transforms import Convert, RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor, ToTorchImage
from torchvision.transforms import Normalize

from ..loading.config import AugmentConfig, Normalization, resolve_normalization
from ..machine import usable_cores
from ..loading.torch_loader import SetEpochRelay
from ..storage.beton import check_beton
from ..storage.ffcv_epochs import POLL_S, LoaderThreadError, WatchedEpochIterator, start_epoch  # noqa: F401 (re-exported)
from .ffcv_compensation import CompensateFFCV
from .ffcv_jit_cache import caching_ffcv_compiler
from .ffcv_raw_decoder import RawRGBImageDecoder

PathLike = Union[str, os.PathLike]
def clamp_workers(num_workers: Optional[int], local_world_size: int = 1) -> int:
    """FFCV worker threads: at most the cores (per local rank) and numba's thread limit, at least 1.

    FFCV raises ``ValueError: The number of threads must be between 1 and N`` above the core count.
    """
    limit = max(1, min(usable_cores() // max(1, local_world_size), numba.config.NUMBA_NUM_THREADS))
    return limit if num_workers is None or num_workers < 1 else min(int(num_workers), limit)


def image_pipeline(
    augment: Optional[AugmentConfig], device: torch.device, seed: int, normalization: Normalization,
    os_cache: bool = True
) -> tuple[list[Any], Optional[CompensateFFCV]]:
    """The image field's operations, and the compensation op in it (to drive its epoch), if any."""
    ops: list[Any] = [RawRGBImageDecoder(os_cache)]
    compensation = None
    if augment is not None:
        if augment.flip:
            ops.append(RandomHorizontalFlip())
        if augment.translate_padding > 0:
            ops.append(RandomTranslate(padding=augment.translate_padding))
        if augment.compensate:
            compensation = CompensateFFCV(augment.p_gray, augment.sigma, seed)
            ops.append(compensation)
    mean, std = normalization.scale
    ops += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(), Convert(torch.float32), Normalize(mean, std)]
    return ops, compensation


def label_pipeline(device: torch.device) -> list[Any]:
    return [IntDecoder(), ToTensor(), ToDevice(device, non_blocking=True), Squeeze(1)]


class FFCVEpochLoader:
    """An FFCV `Loader` that closes its previous epoch's iterator and knows which epoch it is in.

    * ``iter()`` first closes the iterator of the epoch before (Lightning abandons iterators in sanity
      checks, ``fast_dev_run`` and ``limit_*_batches``, and each leaks a thread otherwise).
    * `set_epoch` sets both FFCV's order epoch and the compensation epoch (Lightning calls it through
      ``.sampler.set_epoch``).
    """

    def __init__(self, loader: Loader, compensation: Optional[CompensateFFCV], shuffle: bool) -> None:
        self.loader, self.compensation = loader, compensation
        self._iterator: Any = None
        if shuffle:  # Lightning calls `.sampler.set_epoch(epoch)` on shuffled loaders
            self.sampler, self.batch_sampler = SetEpochRelay(self), None

    @property
    def next_epoch(self) -> int:
        return self.loader.next_epoch

    def set_epoch(self, epoch: int) -> None:
        self.loader.next_epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        self.close()
        return self._run_epoch()

    def _run_epoch(self) -> Iterator[Any]:
        # A generator: the epoch is read, and FFCV's thread started, only at the first batch, so the
        # extra iter() calls Lightning makes before set_epoch neither consume an epoch nor leak a thread.
        if self.compensation is not None:
            self.compensation.set_epoch(self.loader.next_epoch)
        iterator = self._iterator = start_epoch(self.loader)
        try:
            yield from iterator
        finally:
            if self._iterator is iterator:
                self.close()

    def close(self) -> None:
        """Stop the running epoch's worker thread, if any."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator.join(timeout=10)
            self._iterator = None


def make_ffcv_loader(
    path: PathLike,
    batch_size: int,
    *,
    augment: Optional[AugmentConfig] = None,
    normalize: Optional[Normalization] = None,
    shuffle: bool = False,
    drop_last: bool = False,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    num_workers: Optional[int] = None,
    distributed: bool = False,
    local_world_size: int = 1,
    indices: Optional[Sequence[int]] = None,
    os_cache: bool = True,
    batches_ahead: int = 3,
) -> FFCVEpochLoader:
    """An FFCV loader over an (image, label) beton yielding ``(float images NCHW, int64 labels)``.

    ``augment=None`` gives an evaluation loader (no flip, translate or compensation). The device
    may be ``"cpu"`` or a CUDA device; ``num_workers`` is clamped to the cores. With
    ``distributed=True`` (torch.distributed already initialised) each rank reads its own shard.

    Raises:
        FileNotFoundError: no beton at ``path``.
        DamagedBetonError: (a ValueError) the beton is truncated or damaged; the message names it.
        LoaderThreadError: (while iterating) FFCV's worker thread failed; its exception is the cause.
    """
    path = check_beton(path)  # one clear error naming a truncated or damaged file, not FFCV's raw one
    device = torch.device(device)
    ops, compensation = image_pipeline(augment, device, seed, resolve_normalization(normalize, augment), os_cache)
    with caching_ffcv_compiler():  # FFCV's own pipeline functions: compiled once per machine, not per process
        loader = Loader(
            str(path), batch_size=batch_size, num_workers=clamp_workers(num_workers, local_world_size),
            order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, drop_last=drop_last, seed=seed,
            distributed=distributed, indices=None if indices is None else np.asarray(indices), os_cache=os_cache,
            batches_ahead=batches_ahead, pipelines={"image": ops, "label": label_pipeline(device)},
        )
    return FFCVEpochLoader(loader, compensation, shuffle)

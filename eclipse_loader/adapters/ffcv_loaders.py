"""FFCV loaders over an (image, label) beton: pipelines for training and evaluation, and a wrapper
that makes an FFCV `Loader` epoch-aware and leak-free under Lightning.

Training pipeline: decode, flip, translate, `CompensateFFCV`, to tensor (optionally on CUDA), CHW,
float, normalise. Evaluation pipeline: decode, to tensor, CHW, float, normalise.

Two FFCV 1.0.2 traps are handled here (`start_epoch`):

* FFCV allocates an epoch's torch buffers in the thread that calls ``iter()`` and fills them in its
  worker thread. Under Lightning's ``validate``/``test``/``predict`` that call runs in
  ``torch.inference_mode()``, the buffers become inference tensors, and the worker dies on
  "Inplace update to inference tensor outside InferenceMode". Epochs are started with inference
  mode off.
* A worker thread that dies leaves FFCV's ``__next__`` waiting forever on its queue. Here the
  consumer waits in short slices, notices a dead worker and raises `LoaderThreadError` with the
  worker's exception as the cause.
"""
from __future__ import annotations

import os
import queue
from typing import Any, Iterator, Optional, Sequence, Union

import numba
import numpy as np
import torch
from ffcv.fields.basics import IntDecoder
from ffcv.loader import Loader, OrderOption
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler
from ffcv.transforms import Convert, RandomHorizontalFlip, RandomTranslate, Squeeze, ToDevice, ToTensor, ToTorchImage
from torchvision.transforms import Normalize

from ..loading.config import AugmentConfig, usable_cores
from ..loading.torch_loader import EpochSampler
from ..storage.beton import check_beton
from .ffcv_compensation import CompensateFFCV
from .ffcv_jit_cache import caching_ffcv_compiler
from .ffcv_raw_decoder import RawRGBImageDecoder

PathLike = Union[str, os.PathLike]
#: how often (seconds) a consumer waiting for a batch checks that FFCV's worker thread is alive
POLL_S = 0.5


class LoaderThreadError(RuntimeError):
    """FFCV's worker thread died; its exception is the ``__cause__``."""


class WatchedEpochIterator(EpochIterator):
    """FFCV's epoch thread, whose failure reaches the consumer instead of leaving it waiting forever."""

    error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as error:  # reported to the consumer by __next__
            self.error = error

    def __next__(self) -> Any:
        while True:
            try:
                item = self.output_queue.get(timeout=POLL_S)
                break
            except queue.Empty:
                if self.is_alive():
                    continue
                try:  # the worker may have queued its last item just before it ended
                    item = self.output_queue.get_nowait()
                    break
                except queue.Empty:
                    pass
                self.close()
                if self.error is None and self.terminate_event.is_set():
                    raise StopIteration from None  # closed by its owner
                cause = self.error
                what = "ended without finishing the epoch" if cause is None else \
                    f"failed: {type(cause).__name__}: {cause}"
                raise LoaderThreadError(f"FFCV loader thread for {self.loader.reader.file_name} {what}") from cause
        if item is None:
            self.close()
            raise StopIteration
        slot, result = item
        if self.cuda_streams[slot] is not None:
            self.current_stream.wait_stream(self.cuda_streams[slot])  # as FFCV: wait for the copy
        return result


def start_epoch(loader: Loader) -> WatchedEpochIterator:
    """``iter(loader)`` of FFCV 1.0.2 (``Loader.__iter__``), with a `WatchedEpochIterator`, and with
    inference mode off while the epoch's buffers are allocated (see the module docstring)."""
    with torch.inference_mode(False):
        Compiler.set_num_threads(loader.num_workers)
        order = loader.next_traversal_order()
        selected_order = order[:len(loader) * loader.batch_size]
        loader.next_epoch += 1
        if loader.code is None or loader.recompile:
            loader.generate_code()
        return WatchedEpochIterator(loader, selected_order)


def clamp_workers(num_workers: Optional[int], local_world_size: int = 1) -> int:
    """FFCV worker threads: at most the cores (per local rank) and numba's thread limit, at least 1.

    FFCV raises ``ValueError: The number of threads must be between 1 and N`` above the core count.
    """
    limit = max(1, min(usable_cores() // max(1, local_world_size), numba.config.NUMBA_NUM_THREADS))
    return limit if num_workers is None or num_workers < 1 else min(int(num_workers), limit)


def image_pipeline(
    augment: Optional[AugmentConfig], device: torch.device, seed: int, normalize: AugmentConfig, os_cache: bool = True
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
    mean, std = normalize.scale
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
            self.sampler, self.batch_sampler = EpochSampler(self), None

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
    normalize: Optional[AugmentConfig] = None,
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
    ops, compensation = image_pipeline(augment, device, seed, normalize or augment or AugmentConfig(), os_cache)
    with caching_ffcv_compiler():  # FFCV's own pipeline functions: compiled once per machine, not per process
        loader = Loader(
            str(path), batch_size=batch_size, num_workers=clamp_workers(num_workers, local_world_size),
            order=OrderOption.RANDOM if shuffle else OrderOption.SEQUENTIAL, drop_last=drop_last, seed=seed,
            distributed=distributed, indices=None if indices is None else np.asarray(indices), os_cache=os_cache,
            batches_ahead=batches_ahead, pipelines={"image": ops, "label": label_pipeline(device)},
        )
    return FFCVEpochLoader(loader, compensation, shuffle)

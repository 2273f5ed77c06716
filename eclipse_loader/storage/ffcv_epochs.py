"""One FFCV epoch, started and consumed safely (FFCV 1.0.2): used by every reader of a beton.

* FFCV allocates an epoch's torch buffers in the thread that calls ``iter()`` and fills them in its
  worker thread. Under Lightning's ``validate``/``test``/``predict`` that call runs in
  ``torch.inference_mode()``, the buffers become inference tensors, and the worker dies on
  "Inplace update to inference tensor outside InferenceMode". `start_epoch` starts epochs with
  inference mode off.
* A worker thread that dies leaves FFCV's ``__next__`` waiting forever on its queue. Here the
  consumer waits in short slices, notices a dead worker and raises `LoaderThreadError` with the
  worker's exception as the cause.
"""
from __future__ import annotations

import queue
from typing import Any, Optional

import torch
from ffcv.loader import Loader
from ffcv.loader.epoch_iterator import EpochIterator
from ffcv.pipeline.compiler import Compiler

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

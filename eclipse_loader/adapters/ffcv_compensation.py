"""`CompensateFFCV`: the FFCV pipeline Operation form of the corruption compensation.

It runs in FFCV's numba stage on uint8 HWC batches and produces exactly the output of
`eclipse_loader.CorruptionCompensation.apply` for the same ``(seed, epoch, index)``: both draw from
`eclipse_loader.compensation.counter_rng` and `eclipse_loader.compensation.noise_table`, so a
sample's corruption depends neither on the order, the batch it lands in nor the thread that runs it.
The work is done by the cached kernels of `eclipse_loader.compensation.numba_kernels`; this module
only wires them into FFCV.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Tuple

import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State

from ..compensation import noise_table
from ..compensation import numba_kernels as kernels
from ..compensation.params import check_compensation_args
from ..recipes import DEFAULT_RECIPE


class CompensateFFCV(Operation):
    """Random grayscale (``p_gray``) + Gaussian noise (``sigma``, [0,1] units), seeded per sample and epoch.

    Operates on raw uint8 HWC arrays (not tensors): place it after the image decoder and any
    flip/translate, before ``ToTensor``. Writes into its own allocation; the input is left untouched.

    Epochs: FFCV tells an Operation nothing about epochs, so by default the op counts how often it has
    processed each sample, and the n-th pass over a sample draws the corruption of epoch n; in a
    single-process loader that visits every sample once per epoch (any order, ``indices=``,
    ``drop_last=False``) that is the epoch number, so the corruption is redrawn every epoch without
    being told, exactly as with `set_epoch`. With ``drop_last=True`` the dropped samples' counts lag
    behind (still never the same draw twice). Under ``torch.distributed`` (or with ``RANK`` set), rank
    r counts from ``r * 2**20``: a sample that moves between ranks never meets a draw twice either
    (but the draws then differ from `set_epoch`'s). `set_epoch` overrides the count
    (`eclipse_loader.adapters.ffcv_loaders` calls it before each epoch); ``set_epoch(None)`` returns
    to counting.

    Args:
        p_gray: probability of turning a sample grayscale (default: the ``default`` recipe's 0.2;
            the paper's 0.4 via recipe ``"paper"``).
        sigma: noise std in [0, 1] pixel units (default: the ``default`` recipe's 0.03; the paper's
            0.05 via recipe ``"paper"``).
        seed: base seed of the draws.
    """

    def __init__(self, p_gray: float = DEFAULT_RECIPE.p_gray, sigma: float = DEFAULT_RECIPE.sigma, seed: int = 0) -> None:
        super().__init__()
        check_compensation_args(p_gray, sigma, seed)
        self.p_gray, self.sigma, self.seed = float(p_gray), float(sigma), int(seed)
        self._state = np.array([kernels.EPOCH_AUTO, 0], dtype=np.int64)  # read by the kernels at run time
        self._visits = np.zeros(0, dtype=np.int64)
        empty = np.zeros(0, np.int16)
        self._levels = noise_table.rounded_noise_table(255.0 * self.sigma) if self.sigma > 0 else empty
        self._salts: Optional[np.ndarray] = None

    @property
    def epoch(self) -> Optional[int]:
        """The epoch set with `set_epoch`, or None while the op counts passes itself."""
        value = int(self._state[0])
        return None if value == kernels.EPOCH_AUTO else value

    def set_epoch(self, epoch: Optional[int]) -> None:
        """Use the draws of ``epoch`` for the next batches (None: count passes); takes effect at once."""
        if epoch is not None and (int(epoch) != epoch or epoch < 0):
            raise ValueError(f"epoch must be a non-negative integer or None, got {epoch!r}")
        self._state[0] = kernels.EPOCH_AUTO if epoch is None else int(epoch)

    def pass_counts(self) -> np.ndarray:
        """How many times each sample of the dataset has been processed (a copy)."""
        return self._visits.copy()

    def accept_globals(self, metadata, memory_read) -> None:
        super().accept_globals(metadata, memory_read)
        if metadata is not None and len(metadata) != len(self._visits):  # FFCV calls this again on recompiles
            self._visits = np.zeros(len(metadata), dtype=np.int64)

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        shape = previous_state.shape
        if previous_state.dtype != np.dtype("uint8") or len(shape) != 3 or shape[2] != 3:
            raise ValueError(
                f"CompensateFFCV needs uint8 HWC RGB images before ToTensor, got {previous_state.dtype} {shape}"
            )
        self._salts = noise_table.run_salts(int(np.prod(shape)))
        return dataclasses.replace(previous_state, jit_mode=True), AllocationQuery(shape, np.dtype("uint8"))

    def generate_code(self) -> Callable:
        if self._salts is None:
            raise RuntimeError("declare_state_and_memory must run before generate_code")
        seed, p_gray, salts = self.seed, self.p_gray, self._salts
        self._state[1] = _process_rank() * kernels.RANK_STRIDE
        state_address, _ = kernels.array_at(self._state)
        visits_address, num_visits = kernels.array_at(self._visits)
        levels_address, levels_length = kernels.array_at(self._levels)
        kernel = kernels.compensate_batch

        def compensate(images, dst, indices):
            # np.int64(...): plain int64 arguments, not literals, so the cached kernel fits every process
            return kernel(images, dst, indices, np.int64(seed), p_gray, np.int64(state_address),
                          np.int64(visits_address), np.int64(num_visits), np.int64(levels_address),
                          np.int64(levels_length), salts)

        compensate.with_indices = True
        return compensate

    def __repr__(self) -> str:
        return f"CompensateFFCV(p_gray={self.p_gray}, sigma={self.sigma}, seed={self.seed}, epoch={self.epoch})"


def _process_rank() -> int:
    """This process's distributed rank: torch.distributed's if initialised, else ``RANK`` (torchrun), else 0."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    return int(os.environ.get("RANK", "0") or 0)

"""`CompensateFFCV`: the FFCV pipeline Operation form of the corruption compensation.

It runs in FFCV's numba (JIT) stage on uint8 HWC batches, parallel over samples, and produces exactly
the output of `eclipse_loader.CorruptionCompensation.apply` for the same ``(seed, epoch, index)``: both
use `eclipse_loader.compensation.counter_rng`, so a sample's corruption depends neither on the order,
the batch it lands in nor the thread that runs it.

FFCV's JIT freezes closure arrays at compile time and passes no epoch to an Operation, so the epoch is
read at run time from a one-element buffer owned by the operation (`set_epoch`), through its address.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Tuple

import numba
import numpy as np
from ffcv.pipeline.allocation_query import AllocationQuery
from ffcv.pipeline.compiler import Compiler
from ffcv.pipeline.operation import Operation
from ffcv.pipeline.state import State
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..compensation import counter_rng as rng
from ..compensation.functional import LUMA_B, LUMA_G, LUMA_HALF, LUMA_R
from ..compensation.transform import check_compensation_args


@intrinsic
def _as_pointer(typingctx, address):
    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@numba.njit(nogil=True)
def read_int64_at(address: int) -> int:
    """The int64 stored at ``address`` (read at call time, unlike a frozen closure array)."""
    return numba.carray(_as_pointer(address), (1,), np.int64)[0]


@numba.njit(nogil=True)
def compensate_one(src, dst, key, p_gray, noise_scale, salt1, salt2):
    """Compensate one HWC uint8 image ``src`` into ``dst`` (see `compensation.functional`)."""
    height, width, channels = src.shape
    gray = p_gray > 0 and rng.to_unit_open(rng.gray_word(key)) < p_gray
    j = 0
    for h in range(height):
        for w in range(width):
            luma = 0
            if gray:
                luma = (np.int64(src[h, w, 0]) * LUMA_R + np.int64(src[h, w, 1]) * LUMA_G
                        + np.int64(src[h, w, 2]) * LUMA_B + LUMA_HALF) >> 16
            for c in range(channels):
                value = luma if gray else np.int64(src[h, w, c])
                if noise_scale > 0:
                    u1 = rng.to_unit_open(rng.hash32(key ^ salt1[j]))
                    u2 = rng.to_unit_open(rng.hash32(key ^ salt2[j]))
                    z = np.sqrt(-2.0 * np.log(u1)) * np.cos((2.0 * np.pi) * u2)
                    noisy = np.floor(value + noise_scale * z + 0.5)
                    value = np.int64(min(max(noisy, 0.0), 255.0))
                dst[h, w, c] = value
                j += 1


class CompensateFFCV(Operation):
    """Random grayscale (``p_gray``) + Gaussian noise (``sigma``, [0,1] units), seeded per sample and epoch.

    Operates on raw uint8 HWC arrays (not tensors): place it after the image decoder and any
    flip/translate, before ``ToTensor``. Writes into its own allocation and returns it; the input
    buffer is left untouched. Call `set_epoch` before each epoch (`eclipse_loader.adapters.ffcv_loaders`
    does this for you) or the draws of epoch 0 repeat.
    """

    def __init__(self, p_gray: float = 0.4, sigma: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        check_compensation_args(p_gray, sigma, seed)
        self.p_gray = float(p_gray)
        self.sigma = float(sigma)
        self.seed = int(seed)
        self._epoch_cell = np.zeros(1, dtype=np.int64)
        self._salts: Optional[Tuple[np.ndarray, np.ndarray]] = None

    @property
    def epoch(self) -> int:
        return int(self._epoch_cell[0])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws the next batches use (takes effect without recompiling)."""
        self._epoch_cell[0] = int(epoch)

    def declare_state_and_memory(self, previous_state: State) -> Tuple[State, Optional[AllocationQuery]]:
        shape = previous_state.shape
        if previous_state.dtype != np.dtype("uint8") or len(shape) != 3 or shape[2] != 3:
            raise ValueError(
                f"CompensateFFCV needs uint8 HWC RGB images before ToTensor, got {previous_state.dtype} {shape}"
            )
        j = np.arange(int(np.prod(shape)), dtype=np.int64)
        self._salts = (rng.element_salt(2 * j), rng.element_salt(2 * j + 1))
        return dataclasses.replace(previous_state, jit_mode=True), AllocationQuery(shape, np.dtype("uint8"))

    def generate_code(self) -> Callable:
        if self._salts is None:
            raise RuntimeError("declare_state_and_memory must run before generate_code")
        my_range = Compiler.get_iterator()
        p_gray, noise_scale, seed = self.p_gray, 255.0 * self.sigma, self.seed
        salt1, salt2 = self._salts
        epoch_address = self._epoch_cell.ctypes.data
        read_epoch, kernel, key_of = read_int64_at, compensate_one, rng.sample_key

        def compensate(images, dst, indices):
            epoch = read_epoch(epoch_address)
            for i in my_range(images.shape[0]):
                key = key_of(seed, epoch, np.int64(indices[i]))
                kernel(images[i], dst[i], key, p_gray, noise_scale, salt1, salt2)
            return dst[: images.shape[0]]

        compensate.is_parallel = True
        compensate.with_indices = True
        return compensate

    def __repr__(self) -> str:
        return f"CompensateFFCV(p_gray={self.p_gray}, sigma={self.sigma}, seed={self.seed}, epoch={self.epoch})"

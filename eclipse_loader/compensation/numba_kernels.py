"""numba kernels of the corruption compensation on uint8 HWC images (the FFCV Operation's work).

They compute exactly what `functional.compensate_with_keys` computes (same keys, grayscale rule and
noise-table runs, see `noise_table`), one image at a time, and are compiled once per machine
(``cache=True``: later processes load the machine code instead of compiling for ~5 s).

FFCV freezes the arrays a pipeline closure captures into the compiled code, and passes an
Operation nothing but the batch, its output buffer and the sample indices. State that must change
while a loader runs (the epoch, the per-sample pass counters) and the large noise table are
therefore passed by address (`array_at`); the caller keeps the arrays alive.

``EPOCH_AUTO``: unless an epoch is set, each sample uses the number of times this operation has
already processed it, so the n-th pass over a sample draws epoch n's corruption (exactly the epoch
number when every epoch visits every sample; offset by `RANK_STRIDE` per distributed rank).
"""
from __future__ import annotations

import numba
import numpy as np
from numba.core import cgutils, types
from numba.extending import intrinsic

from . import counter_rng as rng
from .functional import LUMA_B, LUMA_G, LUMA_HALF, LUMA_R
from .noise_table import RUN_LENGTH, TABLE_BITS

EPOCH_AUTO = -1
RANK_STRIDE = 1 << 20
"""Auto-mode epochs of rank r start at ``r * RANK_STRIDE``: with FFCV's ``distributed=True`` a sample
moves between ranks from epoch to epoch, and each rank counts only its own passes, so without the
offset two ranks could draw the same corruption for one sample in different epochs."""


@intrinsic
def _as_pointer(typingctx, address):
    """An int64 address as a ``void*`` (numba has no other way to view memory it did not allocate)."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(address), codegen


@numba.njit(nogil=True, cache=True)
def _int64_at(address, length):
    return numba.carray(_as_pointer(address), (length,), np.int64)


@numba.njit(nogil=True, cache=True)
def _int16_at(address, length):
    return numba.carray(_as_pointer(address), (length,), np.int16)


def array_at(array: np.ndarray) -> tuple[int, int]:
    """``(address, length)`` of a C-contiguous int64 or int16 array, for the kernels below."""
    if not array.flags.c_contiguous or array.dtype not in (np.int64, np.int16):
        raise ValueError(f"need a C-contiguous int64/int16 array, got {array.dtype} {array.flags}")
    return array.ctypes.data, array.size


@numba.njit(nogil=True, cache=True, error_model="numpy")
def compensate_image(src, dst, key, p_gray, levels, salts):
    """Compensate one HWC uint8 image ``src`` into the C-contiguous ``dst``.

    ``levels``: `noise_table.rounded_noise_table` of the noise scale (empty: no noise); ``salts``:
    `noise_table.run_salts` of the image size.
    """
    flat_src = np.ascontiguousarray(src).reshape(-1)
    flat_dst = dst.reshape(-1)
    n = flat_src.shape[0]
    gray = p_gray > 0 and rng.to_unit_open(rng.gray_word(key)) < p_gray
    noise = levels.shape[0] > 0
    base = flat_src
    if gray:  # the noise loop below vectorises only when it does not read what it writes: luma to scratch
        base = np.empty(n, np.uint8) if noise else flat_dst
        _luma_rgb(flat_src, base)
    elif not noise:
        for t in range(n):
            flat_dst[t] = flat_src[t]
    if not noise:
        return
    for r in range(salts.shape[0]):
        start = r * RUN_LENGTH
        stop = min(start + RUN_LENGTH, n)
        offset = rng.run_offset(key, salts[r], TABLE_BITS)
        _add_clamped(base[start:stop], levels[offset:offset + stop - start], flat_dst[start:stop])


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _luma_rgb(src, dst):
    """PIL's integer luma of each RGB pixel of the flat HWC ``src``, written to all three channels of
    ``dst`` (flat indexing ``3 q + c``: LLVM vectorises it, a ``(n, 3)`` view it does not)."""
    for q in range(src.shape[0] // 3):
        luma = np.uint8((np.int32(src[3 * q]) * LUMA_R + np.int32(src[3 * q + 1]) * LUMA_G
                         + np.int32(src[3 * q + 2]) * LUMA_B + LUMA_HALF) >> 16)
        dst[3 * q] = luma
        dst[3 * q + 1] = luma
        dst[3 * q + 2] = luma


@numba.njit(nogil=True, cache=True, error_model="numpy", inline="always")
def _add_clamped(values, noise, out):
    for t in range(values.shape[0]):
        out[t] = min(max(np.int32(values[t]) + noise[t], 0), 255)


@numba.njit(nogil=True, cache=True)
def epochs_of_batch(indices, state_address, visits_address, num_visits):
    """The epoch whose draws each sample of ``indices`` uses, counting the pass.

    The state holds two int64: an epoch set with ``set_epoch`` (>= 0) or `EPOCH_AUTO`, and the offset
    added to counts in auto mode (`RANK_STRIDE` times the process's rank). Every call increments the
    visit counter of each index (so the counters stay meaningful if the mode changes); in auto mode
    the epoch is the counter before the increment, plus the offset.
    """
    state = _int64_at(state_address, 2)
    fixed, offset = state[0], state[1]
    visits = _int64_at(visits_address, num_visits)
    epochs = np.empty(indices.shape[0], np.int64)
    for i in range(indices.shape[0]):
        index = np.int64(indices[i])
        if 0 <= index < num_visits:
            epochs[i] = visits[index] + offset if fixed == EPOCH_AUTO else fixed
            visits[index] += 1
        elif fixed == EPOCH_AUTO:
            raise ValueError("CompensateFFCV: a sample index has no pass counter (the op is used outside "
                             "an FFCV Loader?); call set_epoch() first")
        else:
            epochs[i] = fixed
    return epochs


@numba.njit(nogil=True, cache=True, parallel=True)
def _compensate_images(images, dst, indices, epochs, seed, p_gray, levels, salts):
    for i in numba.prange(images.shape[0]):
        key = rng.sample_key(seed, epochs[i], np.int64(indices[i]))
        compensate_image(images[i], dst[i], key, p_gray, levels, salts)


@numba.njit(nogil=True, cache=True)
def compensate_batch(images, dst, indices, seed, p_gray, state_address, visits_address, num_visits,
                     levels_address, levels_length, salts):
    """The whole work of `CompensateFFCV` on one FFCV batch; returns ``dst[:len(images)]``.

    Parallel over images with numba's thread count of the calling thread (FFCV sets it to the loader's
    ``num_workers``). Addresses are those of the op's state, pass counters and noise table (`array_at`).
    """
    epochs = epochs_of_batch(indices, state_address, visits_address, num_visits)
    levels = _int16_at(levels_address, levels_length)
    _compensate_images(images, dst, indices, epochs, seed, p_gray, levels, salts)
    return dst[:images.shape[0]]

"""Counter-based random numbers shared by the torch and the numba (FFCV) compensation kernels.

Every random draw of the compensation is a pure function of ``(seed, epoch, sample index, element)``,
computed with 32-bit integer hashing written only with ``&``, ``^``, ``>>``, ``+`` and ``*`` on
non-negative int64 values below 2**49. The same Python source therefore runs on numpy arrays, torch
int64 tensors (CPU or CUDA) and, compiled with numba, inside an FFCV Operation, and the three give
bit-identical integers. Nothing depends on batch composition, worker count or order.

The hash is the "lowbias32" integer finaliser (Chris Wellons, hash-prospector), a bijection on
32-bit words.
"""
from __future__ import annotations

try:  # numba is optional: with it, the same functions are also callable from jitted code
    from numba.extending import register_jitable as _jitable
except ImportError:  # pragma: no cover - exercised only where numba is absent

    def _jitable(fn):
        return fn


MASK32 = 0xFFFFFFFF
_INV_2_32 = 1.0 / 4294967296.0
_GRAY_STREAM = 0x2545F491
_NOISE_STREAM = 0x68E31DA4


@_jitable
def mulmod32(x, c: int):
    """``(x * c) mod 2**32`` for ``0 <= x < 2**32`` without ever leaving signed int64 range."""
    lo = c & 0xFFFF
    hi = c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & MASK32


@_jitable
def hash32(x):
    """lowbias32: a well-mixed bijection of 32-bit words (works on ints, numpy and torch int64)."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = mulmod32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = mulmod32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def hash32_numpy(x: "np.ndarray") -> "np.ndarray":
    """`hash32` of a numpy integer array, computed in wrapping uint64 arithmetic (several times faster
    than `hash32` on numpy; the same words). Returns uint64."""
    import numpy as np

    x = x.astype(np.uint64) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(16))
    x = (x * np.uint64(0x7FEB352D)) & np.uint64(MASK32)
    x = x ^ (x >> np.uint64(15))
    x = (x * np.uint64(0x846CA68B)) & np.uint64(MASK32)
    return x ^ (x >> np.uint64(16))


@_jitable
def sample_key(seed, epoch, index):
    """The 32-bit key of one sample in one epoch; all of its draws derive from it."""
    return hash32(hash32(hash32(seed & MASK32) ^ (epoch & MASK32)) ^ (index & MASK32))


@_jitable
def gray_word(key):
    """The 32-bit word that decides grayscale for a sample (compare its uniform to ``p_gray``)."""
    return hash32(key ^ _GRAY_STREAM)


@_jitable
def run_salt(r):
    """Salt of noise run ``r`` of an image; independent of the sample, so it can be tabulated once."""
    return hash32((r & MASK32) ^ _NOISE_STREAM)


@_jitable
def run_offset(key, salt, table_bits: int):
    """Where in the noise table a sample's run (given by its salt) starts: the top ``table_bits`` bits
    of a hash of ``(key, salt)``, in ``[0, 2**table_bits)``."""
    return hash32(key ^ salt) >> (32 - table_bits)


@_jitable
def to_unit_open(word):
    """Map a 32-bit word to a float in the open interval (0, 1)."""
    return (word + 0.5) * _INV_2_32

"""Arrays backed by an unnamed temporary file, so that decoding a large image folder does not hold its pixels
in the process's own memory.

The file is created with `tempfile.TemporaryFile` (under ``$TMPDIR``, unnamed on Linux), so it has no path to
leave behind: the kernel frees it when the last mapping is gone, also after a crash. Its pages live in the page
cache, which the kernel can write back and drop, unlike anonymous memory.
"""
from __future__ import annotations

import tempfile

import numpy as np


def disk_backed_array(shape: tuple[int, ...], dtype: np.dtype = np.uint8) -> np.ndarray:
    """A zero-filled, writable `np.memmap` of ``shape`` over an unnamed temporary file."""
    with tempfile.TemporaryFile(prefix="eclipse-loader-") as handle:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        handle.truncate(max(size, 1))
        # np.memmap keeps its own duplicate of the descriptor: closing the handle here frees nothing
        return np.memmap(handle, dtype=dtype, mode="r+", shape=shape)

"""`RawRGBImageDecoder`: FFCV's ``SimpleRGBImageDecoder`` for betons of raw (uncompressed) images,
compiled once per machine.

FFCV's decoder calls its C library through ctypes (``imdecode`` for JPEG, ``memcpy`` for raw pixels),
and numba cannot cache machine code that holds a ctypes address, so it recompiles in every process
(0.5-2 s of the first batch). For a beton whose images are all stored raw and read through FFCV's OS
page cache (``os_cache=True``), this decoder copies the pixels with a cached numba kernel instead:
same output, byte for byte. Anything else (a JPEG image, ``os_cache=False``) uses FFCV's decoder.
"""
from __future__ import annotations

from typing import Callable

import numba
import numpy as np
from ffcv.fields.rgb_image import SimpleRGBImageDecoder

_RAW = 1
"""``ffcv.fields.rgb_image.IMAGE_MODES["raw"]`` (a numba typed dict: reading it from Python compiles for ~0.5 s)."""


@numba.njit(nogil=True, cache=True)
def copy_raw_images(batch_indices, destination, metadata, storage_state):
    """Copy the raw pixels of ``batch_indices`` from the OS-cache memory map (FFCV's
    ``OSCacheManager`` state: ``(mmap, page pointers, sizes)``) into ``destination``."""
    mmap, ptrs, sizes = storage_state
    for i in range(len(batch_indices)):
        field = metadata[batch_indices[i]]
        address = field["data_ptr"]
        size = sizes[np.searchsorted(ptrs, address)]
        flat = destination[i].reshape(-1)
        flat[:] = mmap[address:address + size]
    return destination[:len(batch_indices)]


class RawRGBImageDecoder(SimpleRGBImageDecoder):
    """`SimpleRGBImageDecoder` with a cached kernel for all-raw betons read through the OS cache."""

    def __init__(self, os_cache: bool = True) -> None:
        super().__init__()
        self.os_cache = os_cache

    def generate_code(self) -> Callable:
        if not self.os_cache or not bool(np.all(self.metadata["mode"] == _RAW)):
            return super().generate_code()

        def decode(batch_indices, destination, metadata, storage_state):  # no closure: cached (ffcv_jit_cache)
            return copy_raw_images(batch_indices, destination, metadata, storage_state)

        return decode

"""Memory-map an array stored uncompressed inside an ``.npz`` (``np.savez``), instead of reading it.

``np.load(..., mmap_mode="r")`` maps ``.npy`` files only; an ``.npz`` is a zip archive whose members
``np.savez`` stores without compression, so a member's bytes lie contiguously in the file and can be
mapped directly. Compressed members (``np.savez_compressed``) cannot be mapped: `unpack_npz_member`
inflates one as a stream into an array mapped from an unnamed temporary file (`disk_backed_array`), so it
costs page cache rather than process memory.
"""
from __future__ import annotations

import os
import struct
import zipfile
from typing import Any, Optional, Union

import numpy as np

from .disk_array import disk_backed_array

PathLike = Union[str, os.PathLike]
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")  # the zip local file header before a member's name


def mmap_npz_member(path: PathLike, key: str) -> Optional[np.ndarray]:
    """A read-only memory map of array ``key`` in the ``.npz`` at ``path``; ``None`` when the member
    is compressed, not a plain (non-object) array, or not laid out as ``np.savez`` writes it."""
    with zipfile.ZipFile(path) as archive:
        try:
            info = archive.getinfo(f"{key}.npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        header = _LOCAL_HEADER.unpack(handle.read(_LOCAL_HEADER.size))
        if header[0] != b"PK\x03\x04":
            return None
        name_length, extra_length = header[9], header[10]
        member_start = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
        handle.seek(member_start)
        header = read_npy_header(handle)
        if header is None:
            return None
        shape, fortran, dtype = header
        data_start = handle.tell()
    if dtype.hasobject or fortran or data_start + int(np.prod(shape)) * dtype.itemsize > os.path.getsize(path):
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=tuple(shape), order="C")


def unpack_npz_member(path: PathLike, key: str, chunk_bytes: int = 16 << 20) -> Optional[np.ndarray]:
    """Array ``key`` of the ``.npz`` at ``path`` inflated, ``chunk_bytes`` at a time, into a `disk_backed_array`;
    ``None`` when it is not a plain C-order array of fixed-size items (the caller then reads it as numpy does)."""
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        header = read_npy_header(member)
        if header is None:
            return None
        shape, fortran, dtype = header
        if dtype.hasobject or fortran:
            return None
        array = disk_backed_array(tuple(shape), dtype)
        target = memoryview(array.reshape(-1).view(np.uint8)) if array.size else memoryview(b"")
        filled = 0
        while filled < len(target):
            count = member.readinto(target[filled:filled + chunk_bytes])
            if not count:
                raise EOFError(f"{key}.npy ends after {filled} of {len(target)} bytes")
            filled += count
    return array


def read_npy_header(handle: Any) -> Optional[tuple[tuple[int, ...], bool, np.dtype]]:
    """``(shape, fortran_order, dtype)`` from the ``.npy`` header at ``handle``'s position (left just after it);
    ``None`` for a format version numpy's readers do not know."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    if version in ((2, 0), (3, 0)):
        return np.lib.format.read_array_header_2_0(handle)
    return None

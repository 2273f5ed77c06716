"""Memory-map an array stored uncompressed inside an ``.npz`` (``np.savez``), instead of reading it.

``np.load(..., mmap_mode="r")`` maps ``.npy`` files only; an ``.npz`` is a zip archive whose members
``np.savez`` stores without compression, so a member's bytes lie contiguously in the file and can be
mapped directly. Compressed members (``np.savez_compressed``) cannot: they are read into memory.
"""
from __future__ import annotations

import os
import struct
import zipfile
from typing import Optional, Union

import numpy as np

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
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
        else:
            return None
        data_start = handle.tell()
    if dtype.hasobject or fortran or data_start + int(np.prod(shape)) * dtype.itemsize > os.path.getsize(path):
        return None
    if int(np.prod(shape)) == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=tuple(shape), order="C")

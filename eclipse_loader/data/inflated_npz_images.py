"""`InflatedNpzImages`: the images of a compressed ``.npz`` (``np.savez_compressed``), inflated where they are read.

A deflate stream cannot be entered in the middle, but it can be read forward without keeping what was read:
reading a block inflates the stream up to the block's end and keeps only the block. The purification pass reads
its blocks in increasing order, so one pass over the stream serves a whole process (each DDP rank inflates the
stream once and keeps only its own blocks), and nothing is copied to disk or held beyond the block in flight.
A read behind the stream's position starts the stream again (`zipfile.ZipExtFile.seek`), so random access works
but is slow: a training loader should use the inflated copy `from_npz` makes without ``lazy``.
"""
from __future__ import annotations

import os
import threading
import zipfile
import zlib
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from .images import InvalidInputError, LazyImages
from .npz_mmap import read_npy_header

PathLike = Union[str, os.PathLike]
_HASH_CHUNK = 64 << 20  # bytes per read when the whole member streams into a digest
_INFLATE_ERRORS = (OSError, EOFError, zlib.error, zipfile.BadZipFile)  # what a damaged or truncated stream raises


class InflatedNpzImages(LazyImages):
    """A compressed ``.npz`` member of uint8 NHWC images as a read-only array (`LazyImages`), inflated on demand.

    Build it with `open`. Indexing takes an integer, a slice or a 1-D integer array; a read that fails (a damaged
    stream) raises `InvalidInputError` naming the file and the images. Each process (and each DataLoader worker,
    which gets a pickled copy) opens its own stream.
    """

    def __init__(self, path: Path, key: str, shape: tuple[int, ...], data_start: int) -> None:
        self.path, self.key, self.shape, self._data_start = path, key, shape, data_start
        self._image_bytes = int(np.prod(shape[1:], dtype=np.int64))
        self._stream: Optional[tuple[int, zipfile.ZipFile, Any]] = None  # (pid, archive, member)
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: PathLike, key: str) -> Optional["InflatedNpzImages"]:
        """Member ``key`` of the ``.npz`` at ``path`` when it is compressed and holds uint8 ``(N, H, W, 3)`` images
        in C order; ``None`` otherwise (the caller reads it another way, which also reports what is wrong)."""
        path = Path(path)
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(f"{key}.npy")
            if info.compress_type == zipfile.ZIP_STORED:
                return None
            with archive.open(info) as member:
                header = read_npy_header(member)
                data_start = member.tell()
        if header is None:
            return None
        shape, fortran, dtype = header
        if fortran or dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3 or 0 in shape:
            return None
        if info.file_size != data_start + int(np.prod(shape, dtype=np.int64)):
            return None
        return cls(path, key, tuple(int(s) for s in shape), data_start)

    def __getitem__(self, key: Any) -> np.ndarray:
        positions = self._positions(key)
        if isinstance(positions, int):
            return self._read(positions, positions + 1)[0]
        wanted, order = np.unique(positions, return_inverse=True)
        out = np.empty((len(wanted),) + self.shape[1:], np.uint8)
        run_starts = np.flatnonzero(np.diff(wanted, prepend=-2) != 1)  # read each run of consecutive indices once
        for first, last in zip(run_starts, np.append(run_starts[1:], len(wanted))):
            out[first:last] = self._read(int(wanted[first]), int(wanted[last - 1]) + 1)
        return out if np.array_equal(wanted, positions) else out[order.reshape(-1)]

    def _read(self, start: int, stop: int) -> np.ndarray:
        block = np.empty((stop - start,) + self.shape[1:], np.uint8)
        if stop == start:
            return block
        target = memoryview(block.reshape(-1))
        with self._lock:
            member = self._member()
            try:
                member.seek(self._data_start + start * self._image_bytes)  # forward: inflate and drop; back: restart
                filled = 0
                while filled < len(target):
                    count = member.readinto(target[filled:])
                    if not count:
                        raise EOFError(f"the stream ends {len(target) - filled} bytes early")
                    filled += count
            except _INFLATE_ERRORS as error:
                self._close()
                raise self._damaged(f"images {start}..{stop - 1} of {self.key!r}", error) from None
        return block

    def _member(self) -> Any:
        if self._stream is None or self._stream[0] != os.getpid():
            archive = zipfile.ZipFile(self.path)
            self._stream = (os.getpid(), archive, archive.open(f"{self.key}.npy"))
        return self._stream[2]

    def _close(self) -> None:
        if self._stream is not None and self._stream[0] == os.getpid():
            self._stream[2].close()
            self._stream[1].close()
        self._stream = None

    def close(self) -> None:
        """Close this process's stream (the next read opens it again)."""
        with self._lock:
            self._close()

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_stream"], state["_lock"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def update_digest(self, digest: Any) -> None:
        """Feed ``digest`` the inflated pixels in order, as for a numpy array of them (so the cache key is the same as
        for the inflated copy); reading to the end also checks the member's CRC, so a damaged file fails here."""
        with zipfile.ZipFile(self.path) as archive, archive.open(f"{self.key}.npy") as member:
            try:
                member.seek(self._data_start)
                while chunk := member.read(_HASH_CHUNK):
                    digest.update(chunk)
            except _INFLATE_ERRORS as error:
                raise self._damaged(repr(self.key), error) from None

    def _damaged(self, what: str, error: BaseException) -> InvalidInputError:
        return InvalidInputError(f"{self.path}: cannot inflate {what} (damaged or truncated: "
                                 f"{type(error).__name__}: {error})")

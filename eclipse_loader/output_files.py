"""Output files: checked before any work, locked against a second writer, stale temporaries cleaned.

Every file a command writes goes through a temporary ``.NAME.tmp-PID`` next to it and is renamed
into place when complete. A run killed with SIGKILL leaves its temporary behind; the next run on the
same output removes temporaries whose process is gone (never those of a live process).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]
# headroom on top of the pixel bytes: FFCV's page alignment, its index table, the manifest
_SPACE_MARGIN = 1.1
_SPACE_FIXED = 16 << 20


class OutputError(ValueError):
    """The output location cannot be written (a directory, read-only, no space, or locked)."""


def temporary_path(path: PathLike, tag: Optional[str] = None) -> Path:
    """The temporary name ``path`` is written under before the rename (``.NAME.tmp-PID``)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{tag or os.getpid()}")


def save_npz(path: PathLike, tag: Optional[str] = None, **arrays: Any) -> Path:
    """Write ``arrays`` to ``path`` as an uncompressed ``.npz`` through `temporary_path` (``tag`` names the
    writer; default: this pid), renamed into place when complete; nothing is left behind on failure."""
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path, tag)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_output(path: PathLike, needed_bytes: int = 0, what: str = "output") -> Path:
    """Check that ``path`` can be written, before any work is done; returns it.

    Refuses a path that is a directory, a parent that is not a writable directory (creating missing
    parents), and a file system with less free space than ``needed_bytes`` plus headroom.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a directory; give a file name, e.g. {path / 'train.beton'}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the folder of {what} {path}: {error.strerror}") from None
    if not parent.is_dir():
        raise OutputError(f"the folder of {what} {path} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.probe-"):
            pass
    except OSError as error:
        raise OutputError(f"cannot write {what} {path}: {error.strerror} (folder {parent})") from None
    if needed_bytes:
        free = shutil.disk_usage(parent).free
        need = int(needed_bytes * _SPACE_MARGIN) + _SPACE_FIXED
        if free < need:
            raise OutputError(f"not enough space for {what} {path}: needs about {need / 2**20:.0f} MiB, "
                              f"{free / 2**20:.0f} MiB free in {parent}")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: PathLike) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files of ``path`` left by processes that no longer run; returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+)$")
    removed = []
    for candidate in path.parent.iterdir():
        match = pattern.match(candidate.name)
        if match and not candidate.is_symlink() and candidate.is_file() and not _pid_alive(int(match.group(1))):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def lock_files(path: PathLike) -> tuple[Path, Path]:
    """The lock file of ``path`` and the file naming its holder's pid."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    return lock, Path(f"{lock}.pid")


@contextlib.contextmanager
def output_lock(path: PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a ``.NAME.lock`` file beside it, `filelock`) for one writer.

    Raises:
        OutputError: another process holds the lock (its pid is named when it could be read).
    """
    import filelock

    path = Path(path)
    lock_path, pid_path = lock_files(path)
    lock = filelock.FileLock(str(lock_path), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout:
        holder = _read_pid(pid_path)
        who = f"process {holder}" if holder else "another process"
        raise OutputError(f"{path} is being written by {who} (lock {lock_path}); wait for it or pick another output"
                          ) from None
    try:
        pid_path.write_text(str(os.getpid()))
        yield
    finally:
        pid_path.unlink(missing_ok=True)
        lock_path.unlink(missing_ok=True)  # ours: removed while still held, so no other writer is cut off
        lock.release()


def _read_pid(pid_path: Path) -> Optional[int]:
    try:
        return int(pid_path.read_text().strip())
    except (OSError, ValueError):
        return None

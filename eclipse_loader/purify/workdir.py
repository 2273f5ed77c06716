"""A job's work directory (shards): checked before use, written atomically, cleaned of this job's files only.

A work directory may be the user's (``--work-dir``), so a job never deletes anything it did not
write: it refuses a directory that holds other files, a symbolic link, or a link inside it, and at
the end removes only its own chunk/shard/manifest/temporary files (and the directory itself only
when it is the default one the job named and it is empty).
"""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Union

from ..output_files import temporary_path

PathLike = Union[str, os.PathLike]
# the only names a purification job writes into its work directory (chunk_*.npy and work.json: the
# layout of earlier releases, recognised so that their leftovers are cleaned up)
_OWN_NAME = re.compile(r"^(chunk_\d+_\d+\.npy|assembled\.npy|shard_\d+_\d+\.npz|work\.json|job\.json|\..+\.tmp(-[\w.-]+)?)$")
# tolerated but never deleted here: output locks (`eclipse_loader.output_files.output_lock`)
_LOCK_NAME = re.compile(r"^\..+\.lock(\.pid)?$")


class WorkDirError(ValueError):
    """The work directory cannot be used safely (a link, a file, or it holds files of no job of ours)."""


class WorkDirMismatchError(RuntimeError):
    """The work directory holds the files of a different purification job."""


def write_atomic(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create ``path`` by ``write(file)`` under a temporary name, fsync it and rename it into place.

    The file exists complete or not at all (even after SIGKILL or a power cut). The temporary name is
    unique per host and process, since several nodes may share the directory.
    """
    path = Path(path)
    tmp = temporary_path(path, f"{socket.gethostname()}-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def is_job_file(path: Path) -> bool:
    """Whether ``path`` is a regular file (not a link) with a name a purification job writes."""
    return bool(_OWN_NAME.match(path.name)) and not path.is_symlink() and path.is_file()


def open_work_dir(work: PathLike, outputs: Iterable[PathLike] = ()) -> Path:
    """Create ``work`` or check an existing one holds nothing but job files; returns it.

    ``outputs`` are the job's own output files (and their manifests), tolerated when ``work`` is
    their folder; lock files are tolerated too. Neither is ever deleted by `remove_job_files`.

    Raises:
        WorkDirError: ``work`` (or a parent component named by the user) is a symbolic link, is not a
            directory, or holds other files or links.
    """
    work = Path(work)
    if work.is_symlink():
        raise WorkDirError(f"work dir {work} is a symbolic link (to {os.readlink(work)}); give a real directory")
    if work.exists() and not work.is_dir():
        raise WorkDirError(f"work dir {work} exists and is not a directory")
    if work.is_dir():
        mine = {Path(p).name for p in outputs if Path(p).parent.resolve() == work.resolve()}
        mine |= {f"{name}.json" for name in mine}
        foreign = sorted(p.name for p in work.iterdir()
                         if not (is_job_file(p) or p.name in mine or _LOCK_NAME.match(p.name)))
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise WorkDirError(f"work dir {work} holds files that are not purification chunks ({shown}); "
                               "give an empty or new directory")
        return work
    work.mkdir(parents=True, exist_ok=True)
    return work


def remove_job_files(work: PathLike, remove_dir: bool) -> None:
    """Delete the job files in ``work`` (never anything else); then ``work`` itself if ``remove_dir``
    and it is empty."""
    work = Path(work)
    if work.is_symlink() or not work.is_dir():
        return
    for path in work.iterdir():
        if is_job_file(path):
            path.unlink(missing_ok=True)
    if remove_dir:
        try:
            work.rmdir()
        except OSError:  # not empty: something else was put there meanwhile; leave it
            pass

"""Write FFCV ``.beton`` files with the fields ``image`` (RGBImageField) and ``label`` (IntField).

Reading and checking live in `eclipse_loader.storage.reader`, the manifest and errors in
`eclipse_loader.storage.format`; both are re-exported here, the module users import.

This layout is exactly what FFCV's own CIFAR example reads. The writer guards against FFCV's known
failure modes: the data is validated before anything is written (`LabelledImages`), the file is
written under a temporary name and renamed only when complete, and FFCV's `DatasetWriter` runs in a
child process under a watchdog, because it spins forever when one of its workers dies.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Optional

import numpy as np
from tqdm import tqdm

from ..data.images import LabelledImages
from ..machine import usable_cores
from .format import (FFCV_EXTRA_HINT, MANIFEST_SUFFIX, DamagedBetonError, PathLike, manifest_path,  # noqa: F401
                     read_manifest, require_ffcv)
from ..output_files import check_output, lock_files, output_lock, remove_stale_temporaries, temporary_path
from .reader import check_beton, read_beton  # noqa: F401 (re-exported)

WriteMode = Literal["raw", "jpg", "smart", "proportion"]
WRITE_MODES = ("raw", "jpg", "smart", "proportion")


# above this, store per-class counts sparsely (a dense list would be as long as the class count)
_DENSE_COUNTS_LIMIT = 100_000


class BetonWriteError(RuntimeError):
    """FFCV could not write the file; no output was left behind."""


def write_beton(
    path: PathLike,
    data: LabelledImages,
    *,
    write_mode: WriteMode = "raw",
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    num_workers: Optional[int] = None,
    stall_timeout_s: float = 120.0,
    progress: bool = True,
    metadata: Optional[dict[str, Any]] = None,
    lock: bool = True,
) -> Path:
    """Write ``data`` to ``path`` as an FFCV beton, atomically, plus a JSON manifest next to it.

    Args:
        path: destination; its parent directory is created.
        data: validated images and labels (see `eclipse_loader.data.load_source`).
        write_mode: FFCV's ``RGBImageField`` modes: ``"raw"`` (default, pixel-exact), ``"jpg"`` (every
            image JPEG-compressed: smaller, lossy; what large images need), ``"smart"`` (JPEG only where
            raw would be much larger) or ``"proportion"`` (a random ``compress_probability`` of them).
        jpeg_quality: JPEG quality of the compressed images.
        compress_probability: share of images JPEG-compressed with ``write_mode="proportion"``.
        num_workers: FFCV writer processes (default and upper bound: the usable cores).
        stall_timeout_s: abort if no sample is encoded for this long (FFCV's writer hangs on worker errors).
        progress: show a progress bar with images/s.
        metadata: extra JSON-serialisable facts to store in the manifest (e.g. purification config).
        lock: hold `output_lock` on ``path`` while writing (``False`` when the caller already holds it).

    Returns:
        The path written.

    Raises:
        MissingExtraError: ffcv is not installed (checked before anything is written).
        OutputError: ``path`` is a directory, its folder is not writable, lacks space, or another process
            is writing it (checked before anything is written).
        BetonWriteError: the writer failed or stalled; neither the beton nor a temporary file remains.
    """
    if write_mode not in WRITE_MODES:
        raise ValueError(f"write_mode must be one of {WRITE_MODES}, got {write_mode!r}")
    if not 0.0 <= compress_probability <= 1.0:
        raise ValueError(f"compress_probability must be in [0, 1], got {compress_probability!r}")
    if not 1 <= int(jpeg_quality) <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality!r}")
    if len(data) == 0:
        raise ValueError("refusing to write an empty beton: the dataset has no samples")
    require_ffcv()
    path = check_output(path, needed_bytes=data.images.nbytes + 8 * len(data), what="beton")
    with output_lock(path) if lock else _no_lock():
        remove_stale_temporaries(path)
        remove_stale_temporaries(manifest_path(path))
        field = {"write_mode": write_mode, "jpeg_quality": int(jpeg_quality),
                 "compress_probability": float(compress_probability)}
        _write_locked(path, data, field, _clamp_workers(num_workers), stall_timeout_s, progress,
                      metadata, leftovers=lock_files(path) if lock else ())
    return path


def _write_locked(path: Path, data: LabelledImages, field: dict[str, Any], workers: int,
                  stall_timeout_s: float, progress: bool, metadata: Optional[dict[str, Any]],
                  leftovers: tuple[Path, ...]) -> None:
    tmp = temporary_path(path)
    manifest_tmp = temporary_path(manifest_path(path))
    manifest_tmp.write_text(_manifest_text(data, field["write_mode"], metadata))  # built first: fails before any pixel
    context = mp.get_context("fork")
    counter = context.Value("l", 0)
    receive_error, send_error = context.Pipe(duplex=False)
    child = context.Process(
        target=_write_in_child,
        args=(str(tmp), data, field, workers, counter, send_error,
              (manifest_tmp, *leftovers)), daemon=False,
    )
    try:
        child.start()
        send_error.close()
        _watch(child, counter, len(data), stall_timeout_s, progress, path.name, receive_error)
        os.replace(tmp, path)
        try:
            os.replace(manifest_tmp, manifest_path(path))
        except OSError:
            path.unlink(missing_ok=True)  # a beton without its manifest is not left behind
            raise
    finally:
        if child.is_alive():
            _kill_tree(child)
        tmp.unlink(missing_ok=True)
        manifest_tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _clamp_workers(num_workers: Optional[int]) -> int:
    cores = usable_cores()
    if num_workers is None or num_workers < 1:
        return cores
    return min(int(num_workers), cores)


class _CountingDataset:
    """Wraps the arrays for FFCV's writer workers and counts encoded samples in shared memory."""

    def __init__(self, data: LabelledImages, counter: Any) -> None:
        self.images, self.labels, self.counter = data.images, data.labels, counter

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        with self.counter.get_lock():
            self.counter.value += 1
        return self.images[index], int(self.labels[index])


def _write_in_child(tmp: str, data: LabelledImages, field: dict[str, Any], workers: int, counter: Any,
                    send_error: Any, leftovers: tuple[Path, ...]) -> None:
    os.setpgid(0, 0)  # own process group, so the watchdog can kill FFCV's worker processes too
    _die_with_parent((Path(tmp), *leftovers))
    try:
        import ffcv.writer
        from ffcv.fields import IntField, RGBImageField

        ffcv.writer.tqdm = _silent_tqdm  # the parent shows the progress bar
        sample_bytes = int(np.prod(data.image_shape))
        page_size = 1 << max(23, int(np.ceil(np.log2(sample_bytes * 2 + 4096))))
        fields = {"image": RGBImageField(**field), "label": IntField()}
        writer = ffcv.writer.DatasetWriter(tmp, fields, page_size=page_size, num_workers=workers)
        writer.from_indexed_dataset(_CountingDataset(data, counter), chunksize=256)
    except BaseException as error:  # the real cause (e.g. "No space left on device") goes to the parent
        send_error.send(f"{type(error).__name__}: {error}")
        raise


def _die_with_parent(leftovers: tuple[Path, ...]) -> None:
    """If the parent dies (SIGKILL, SIGTERM), remove its temporary files and kill this process group."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        for path in leftovers:
            path.unlink(missing_ok=True)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, name="eclipse-writer-parent-watch", daemon=True).start()


def _silent_tqdm(*args: Any, **kwargs: Any) -> Any:
    return tqdm(*args, **{**kwargs, "disable": True})


def _watch(child: Any, counter: Any, total: int, stall_timeout_s: float, progress: bool, name: str,
           errors: Any) -> None:
    bar = tqdm(total=total, desc=f"writing {name}", unit="img", disable=not progress)
    last_value, last_change = 0, time.monotonic()
    try:
        while True:
            child.join(timeout=0.2)
            value = min(counter.value, total)
            bar.update(value - bar.n)
            if value != last_value:
                last_value, last_change = value, time.monotonic()
            if not child.is_alive():
                break
            if time.monotonic() - last_change > stall_timeout_s:
                _kill_tree(child)
                raise BetonWriteError(
                    f"FFCV's writer made no progress for {stall_timeout_s:.0f}s after {value}/{total} samples "
                    "(a worker probably failed to encode a sample); aborted, nothing written"
                )
    finally:
        bar.close()
    if child.exitcode != 0:
        cause = errors.recv() if errors.poll() else f"exit code {child.exitcode}"
        raise BetonWriteError(f"FFCV's writer failed writing {name} ({cause}); nothing written")


def _kill_tree(child: Any) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()
    child.join(timeout=10)


def _class_counts(data: LabelledImages) -> Any:
    if data.num_classes <= _DENSE_COUNTS_LIMIT:
        return np.bincount(data.labels, minlength=data.num_classes).tolist()
    values, counts = np.unique(data.labels, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts)}


def _manifest_text(data: LabelledImages, write_mode: str, metadata: Optional[dict[str, Any]]) -> str:
    from .. import __version__

    manifest = {
        "format": "ffcv-beton",
        "fields": ["image", "label"],
        "num_samples": len(data),
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "class_counts": _class_counts(data),
        "write_mode": write_mode,
        "eclipse_loader_version": __version__,
        "metadata": metadata or {},
    }
    return json.dumps(manifest, indent=2, sort_keys=True)

"""Write and read FFCV ``.beton`` files with the fields ``image`` (RGBImageField) and ``label`` (IntField).

This layout is exactly what FFCV's own CIFAR example reads. The writer guards against FFCV's known
failure modes: the data is validated before anything is written (`LabelledImages`), the file is
written under a temporary name and renamed only when complete, and FFCV's `DatasetWriter` runs in a
child process under a watchdog, because it spins forever when one of its workers dies.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
from tqdm import tqdm

from ..data.images import LabelledImages
from ..loading.config import usable_cores

WriteMode = Literal["raw", "jpg"]
PathLike = Union[str, os.PathLike]
MANIFEST_SUFFIX = ".json"


class BetonWriteError(RuntimeError):
    """FFCV could not write the file; no output was left behind."""


def manifest_path(beton: PathLike) -> Path:
    """Where the JSON manifest written next to a beton lives (``<name>.beton.json``)."""
    return Path(str(beton) + MANIFEST_SUFFIX)


def write_beton(
    path: PathLike,
    data: LabelledImages,
    *,
    write_mode: WriteMode = "raw",
    jpeg_quality: int = 90,
    num_workers: Optional[int] = None,
    stall_timeout_s: float = 120.0,
    progress: bool = True,
    metadata: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``data`` to ``path`` as an FFCV beton, atomically, plus a JSON manifest next to it.

    Args:
        path: destination; its parent directory is created.
        data: validated images and labels (see `eclipse_loader.data.load_source`).
        write_mode: ``"raw"`` (default, pixel-exact) or ``"jpg"`` (smaller, lossy).
        jpeg_quality: JPEG quality when ``write_mode="jpg"``.
        num_workers: FFCV writer processes (default and upper bound: the usable cores).
        stall_timeout_s: abort if no sample is encoded for this long (FFCV's writer hangs on worker errors).
        progress: show a progress bar with images/s.
        metadata: extra JSON-serialisable facts to store in the manifest (e.g. purification config).

    Returns:
        The path written.

    Raises:
        BetonWriteError: the writer failed or stalled; neither the beton nor a temporary file remains.
    """
    if write_mode not in ("raw", "jpg"):
        raise ValueError(f"write_mode must be 'raw' or 'jpg', got {write_mode!r}")
    if len(data) == 0:
        raise ValueError("refusing to write an empty beton: the dataset has no samples")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    workers = _clamp_workers(num_workers)
    counter = mp.get_context("fork").Value("l", 0)
    child = mp.get_context("fork").Process(
        target=_write_in_child, args=(str(tmp), data, write_mode, jpeg_quality, workers, counter), daemon=False
    )
    try:
        child.start()
        _watch(child, counter, len(data), stall_timeout_s, progress, path.name)
        os.replace(tmp, path)
    finally:
        if child.is_alive():
            _kill_tree(child)
        tmp.unlink(missing_ok=True)
    _write_manifest(path, data, write_mode, metadata)
    return path


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


def _write_in_child(tmp: str, data: LabelledImages, write_mode: str, quality: int, workers: int, counter: Any) -> None:
    os.setpgid(0, 0)  # own process group, so the watchdog can kill FFCV's worker processes too
    import ffcv.writer
    from ffcv.fields import IntField, RGBImageField

    ffcv.writer.tqdm = _silent_tqdm  # the parent shows the progress bar
    sample_bytes = int(np.prod(data.image_shape))
    page_size = 1 << max(23, int(np.ceil(np.log2(sample_bytes * 2 + 4096))))
    fields = {"image": RGBImageField(write_mode=write_mode, jpeg_quality=quality), "label": IntField()}
    writer = ffcv.writer.DatasetWriter(tmp, fields, page_size=page_size, num_workers=workers)
    writer.from_indexed_dataset(_CountingDataset(data, counter), chunksize=256)


def _silent_tqdm(*args: Any, **kwargs: Any) -> Any:
    return tqdm(*args, **{**kwargs, "disable": True})


def _watch(child: Any, counter: Any, total: int, stall_timeout_s: float, progress: bool, name: str) -> None:
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
        raise BetonWriteError(f"FFCV's writer exited with code {child.exitcode}; nothing written")


def _kill_tree(child: Any) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        child.kill()
    child.join(timeout=10)


def _write_manifest(path: Path, data: LabelledImages, write_mode: str, metadata: Optional[dict[str, Any]]) -> None:
    from .. import __version__

    manifest = {
        "format": "ffcv-beton",
        "fields": ["image", "label"],
        "num_samples": len(data),
        "image_shape": list(data.image_shape),
        "num_classes": data.num_classes,
        "class_counts": np.bincount(data.labels, minlength=data.num_classes).tolist(),
        "write_mode": write_mode,
        "eclipse_loader_version": __version__,
        "metadata": metadata or {},
    }
    tmp = manifest_path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(tmp, manifest_path(path))


def read_manifest(path: PathLike) -> dict[str, Any]:
    """The manifest written next to a beton by `write_beton` (``{}`` when there is none)."""
    mpath = manifest_path(path)
    return json.loads(mpath.read_text()) if mpath.exists() else {}


def read_beton(path: PathLike, num_classes: Optional[int] = None) -> LabelledImages:
    """Read a whole (image, label) beton into memory, in stored order (for checks and small data)."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader, OrderOption

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no beton at {path}")
    loader = Loader(
        str(path), batch_size=512, num_workers=1, order=OrderOption.SEQUENTIAL, drop_last=False,
        pipelines={"image": [SimpleRGBImageDecoder()], "label": [IntDecoder()]},
    )
    images, labels = [], []
    for batch_images, batch_labels in loader:
        images.append(np.array(batch_images))
        labels.append(np.array(batch_labels).reshape(-1))
    label_array = np.concatenate(labels).astype(np.int64)
    classes = num_classes or read_manifest(path).get("num_classes") or int(label_array.max()) + 1
    return LabelledImages(np.concatenate(images), label_array, int(classes))

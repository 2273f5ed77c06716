"""Index-keyed shards of a purification job: what is still to do, and their exactly-once collection.

Framework-free (numpy only): `eclipse_loader.purify.engine` (one process, or each rank of the Lightning
pass in `eclipse_loader.adapters.lightning_purify`) writes the shards, this module decides what is still to
do and puts the pieces back together.

Layout of a shard directory::

    WORK/job.json                           # cache key, sample count, shard size (fixed by the first run)
    WORK/shard_<start>_<stop>.npz           # indices (int64, start..stop-1) + images (uint8 NHWC)

The dataset is cut into fixed blocks ``[k * shard_size, (k + 1) * shard_size)``; one shard file holds
one block. Blocks do not depend on the number of processes, so a restart with another world size
skips exactly the finished blocks. Shards are written under a temporary name and renamed, so a
shard file exists complete or not at all.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Union

import numpy as np

from .workdir import WorkDirMismatchError, open_work_dir, write_atomic

PathLike = Union[str, os.PathLike]
JOB_MANIFEST = "job.json"
LAYOUT = "eclipse-shards-v1"
_SHARD_RE = re.compile(r"^shard_(\d+)_(\d+)\.npz$")


class ShardAssemblyError(ValueError):
    """The shards do not hold every sample exactly once (or a shard file is unusable)."""


def block_ranges(num_samples: int, shard_size: int) -> list[tuple[int, int]]:
    """The fixed ``[start, stop)`` index blocks of a job, one per shard file."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    return [(a, min(a + shard_size, num_samples)) for a in range(0, num_samples, shard_size)]


def shard_path(work: PathLike, start: int, stop: int) -> Path:
    """File of the shard holding indices ``start .. stop-1``."""
    return Path(work) / f"shard_{start:09d}_{stop:09d}.npz"


def save_shard(work: PathLike, indices: np.ndarray, images: np.ndarray) -> Path:
    """Write one shard atomically (temporary file, fsync, rename); returns its path.

    ``indices`` must be consecutive (``start .. stop-1``); the file is named after them.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if indices.ndim != 1 or len(indices) == 0:
        raise ValueError(f"indices must be a non-empty 1-D array, got shape {indices.shape}")
    if not np.array_equal(indices, np.arange(indices[0], indices[0] + len(indices))):
        raise ValueError(f"shard indices must be consecutive, got {indices[:8].tolist()}...")
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(indices):
        raise ValueError(f"images must be uint8 NHWC with {len(indices)} rows, got {images.dtype} {images.shape}")
    path = shard_path(work, int(indices[0]), int(indices[-1]) + 1)
    return write_atomic(path, lambda f: np.savez(f, indices=indices, images=images))


def prepare_job(work: PathLike, key: str, num_samples: int, shard_size: int, outputs: Iterable[PathLike] = ()) -> int:
    """Create or check ``work`` (`open_work_dir`, tolerating the job's ``outputs`` in it) and its job
    manifest; returns the shard size in force (the first run's).

    Safe to call from every rank at once: each writes identical content through its own temporary file.

    Raises:
        WorkDirMismatchError: ``work`` holds shards of another job (other inputs, config or denoiser).
    """
    work = open_work_dir(work, outputs)
    manifest = work / JOB_MANIFEST
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if info.get("layout") != LAYOUT or info.get("cache_key") != key or info.get("num_samples") != num_samples:
            raise WorkDirMismatchError(
                f"{work} holds shards of another job (cache key {str(info.get('cache_key'))[:12]}..., "
                f"{info.get('num_samples')} samples; this job {key[:12]}..., {num_samples} samples); "
                "use another work dir or delete it"
            )
        return int(info["shard_size"])
    info = {"layout": LAYOUT, "cache_key": key, "num_samples": num_samples, "shard_size": int(shard_size)}
    write_atomic(manifest, lambda f: f.write(json.dumps(info, sort_keys=True).encode()))
    return int(shard_size)


def read_job(work: PathLike) -> dict[str, Any]:
    """The job manifest of a shard directory."""
    manifest = Path(work) / JOB_MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{work} is not a shard directory (no {JOB_MANIFEST}); run the purification first")
    return json.loads(manifest.read_text())


def _shard_is_complete(path: Path, start: int, stop: int, image_shape: tuple[int, ...]) -> bool:
    """Cheap check without reading the pixels: the zip opens, indices match, the images header fits."""
    try:
        with zipfile.ZipFile(path) as archive:
            with archive.open("indices.npy") as f:
                indices = np.lib.format.read_array(f, allow_pickle=False)
            with archive.open("images.npy") as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    return False
                fmt = np.lib.format
                read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                shape, _, dtype = read_header(f)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False
    return (
        np.array_equal(indices, np.arange(start, stop)) and tuple(shape) == (stop - start, *image_shape)
        and dtype == np.uint8
    )


def pending_blocks(
    work: PathLike, num_samples: int, shard_size: int, image_shape: tuple[int, ...]
) -> list[tuple[int, int]]:
    """The blocks whose shard file is missing or unusable (those are computed again)."""
    return [
        (a, b) for a, b in block_ranges(num_samples, shard_size)
        if not _shard_is_complete(shard_path(work, a, b), a, b, image_shape)
    ]


def _spans(indices: np.ndarray, limit: int = 8) -> str:
    """``0-15, 32, 40-47`` (at most ``limit`` spans, then the count of the rest)."""
    if len(indices) == 0:
        return ""
    breaks = np.flatnonzero(np.diff(indices) != 1)
    starts = np.r_[indices[0], indices[breaks + 1]]
    ends = np.r_[indices[breaks], indices[-1]]
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(starts[:limit], ends[:limit])]
    if len(starts) > limit:
        parts.append(f"... ({len(starts) - limit} more ranges)")
    return ", ".join(parts)


def collect_shards(work: PathLike, num_samples: int, image_shape: tuple[int, ...]) -> np.ndarray:
    """Load every shard of ``work`` and return the images in index order ``0 .. num_samples-1``.

    Raises:
        ShardAssemblyError: a shard is unreadable or malformed, an index is out of range, an index
            is held by more than one shard (names them and the files), or indices are missing.
    """
    files = sorted(p for p in Path(work).iterdir() if _SHARD_RE.match(p.name))
    # filled shard by shard into a file-backed map: memory holds one shard, not the dataset
    images = np.lib.format.open_memmap(Path(work) / "assembled.npy", mode="w+", dtype=np.uint8,
                                       shape=(num_samples, *image_shape))
    owner = np.full(num_samples, -1, dtype=np.int64)
    duplicates: dict[int, list[str]] = {}
    for k, path in enumerate(files):
        try:
            with np.load(path, allow_pickle=False) as archive:
                indices, pixels = archive["indices"], archive["images"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
            raise ShardAssemblyError(
                f"shard {path} is unreadable ({error}); delete it and rerun to recompute it"
            ) from error
        if indices.ndim != 1 or pixels.shape != (len(indices), *image_shape) or pixels.dtype != np.uint8:
            raise ShardAssemblyError(
                f"shard {path} holds {indices.shape} indices and {pixels.dtype} images {pixels.shape}, "
                f"expected images of shape (n, {', '.join(map(str, image_shape))}); delete it and rerun"
            )
        outside = indices[(indices < 0) | (indices >= num_samples)]
        if len(outside):
            raise ShardAssemblyError(
                f"shard {path} holds indices outside [0, {num_samples}): {_spans(np.sort(outside))}"
            )
        seen = owner[indices] >= 0
        for i in indices[seen]:
            duplicates.setdefault(int(i), [files[owner[i]].name]).append(path.name)
        if len(np.unique(indices)) != len(indices):
            values, counts = np.unique(indices, return_counts=True)
            for i in values[counts > 1]:
                duplicates.setdefault(int(i), []).append(f"{path.name} (twice)")
        owner[indices] = k
        images[indices] = pixels
    if duplicates:
        first = sorted(duplicates)[0]
        raise ShardAssemblyError(
            f"{len(duplicates)} indices are held more than once ({_spans(np.array(sorted(duplicates)))}); "
            f"e.g. index {first} in {', '.join(duplicates[first])}; refusing to assemble"
        )
    missing = np.flatnonzero(owner < 0)
    if len(missing):
        raise ShardAssemblyError(
            f"{len(missing)} of {num_samples} indices are in no shard of {work} ({_spans(missing)}); "
            "rerun the purification to compute them"
        )
    return images


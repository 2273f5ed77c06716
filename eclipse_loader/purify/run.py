"""Purify a whole dataset offline, resumably, and write the result as an FFCV beton.

Work is split into fixed index ranges ("chunks"). Each finished chunk is saved as
``WORK/chunk_<start>_<stop>.npy`` via a temporary file and `os.replace`, so a chunk file either
exists complete or not at all. A run killed at any point (even SIGKILL) and started again with the
same inputs skips the finished chunks and computes the rest; because every sample's noise depends
only on ``(seed, index)``, the result equals an uninterrupted run's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from ..data.images import LabelledImages
from ..denoiser.io import check_serves_t_star, denoiser_hash, load_denoiser
from ..storage.beton import read_manifest, require_ffcv, write_beton
from ..storage.output import check_output, output_lock, remove_stale_temporaries, save_npz, temporary_path
from .purifier import NonFiniteOutputError, Purifier, PurifyConfig
from .workdir import open_work_dir, remove_job_files

PathLike = Union[str, os.PathLike]
WORK_MANIFEST = "work.json"
ASSEMBLED_NAME = "assembled.npy"
_log = logging.getLogger(__name__)


class WorkDirMismatchError(RuntimeError):
    """The work directory holds chunks of a different purification job."""


def cache_key(data: LabelledImages, config: PurifyConfig, denoiser_dir: PathLike) -> str:
    """Content hash (sha256 hex) of the input pixels and labels, the config and the denoiser files."""
    h = hashlib.sha256()
    h.update(data.fingerprint().encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(denoiser_hash(denoiser_dir).encode())
    return h.hexdigest()


def _chunk_ranges(n: int, chunk_size: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk_size, n)) for start in range(0, n, chunk_size)]


def _chunk_path(work: Path, start: int, stop: int) -> Path:
    return work / f"chunk_{start:09d}_{stop:09d}.npy"


def _load_chunk(path: Path, expected_shape: tuple[int, ...]) -> Optional[np.ndarray]:
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:  # unreadable: recompute it
        _log.warning("discarding unreadable chunk %s (%s)", path, error)
        return None
    if array.shape != expected_shape or array.dtype != np.uint8:
        _log.warning("discarding chunk %s with shape %s %s", path, array.shape, array.dtype)
        return None
    return array


def _save_atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = temporary_path(path)
    with open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prepare_work_dir(work: Path, key: str, n: int, chunk_size: int, outputs: tuple[Path, ...] = ()) -> int:
    """Create or validate ``work``; returns the chunk size in force (the first run's)."""
    open_work_dir(work, outputs)
    manifest = work / WORK_MANIFEST
    if manifest.is_file():
        info = json.loads(manifest.read_text())
        if info.get("cache_key") != key or info.get("num_samples") != n:
            raise WorkDirMismatchError(
                f"{work} holds chunks of another job (cache key {str(info.get('cache_key'))[:12]}..., "
                f"this job {key[:12]}...); use another work_dir or delete it"
            )
        return int(info["chunk_size"])
    tmp = temporary_path(manifest)
    tmp.write_text(json.dumps({"cache_key": key, "num_samples": n, "chunk_size": chunk_size}))
    os.replace(tmp, manifest)
    return chunk_size


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``device`` as a torch.device (default: CUDA if available, else CPU); refuses an unusable one."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a torch device ({error})") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r}: no CUDA GPU is available here (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif resolved.type not in ("cpu", "mps", "xpu"):
        raise ValueError(f"device {device!r} is not supported (cpu, cuda, cuda:N)")
    return resolved


def check_image_size(unet: torch.nn.Module, data: LabelledImages, denoiser_dir: PathLike) -> None:
    """Refuse images whose size differs from the size the denoiser was trained at."""
    size = getattr(unet.config, "sample_size", None)
    if size is None:
        return
    expected = tuple(size) if isinstance(size, (list, tuple)) else (int(size), int(size))
    if tuple(data.image_shape[:2]) != expected:
        raise ValueError(f"the denoiser in {denoiser_dir} was trained on {expected[0]}x{expected[1]} images, but "
                         f"the data are {data.image_shape[0]}x{data.image_shape[1]}: resize the data or train a "
                         "denoiser at this size")


def _purified_chunk(purifier: Purifier, images: np.ndarray, start: int, denoiser_dir: PathLike) -> np.ndarray:
    try:
        return purifier.purify(images, range(start, start + len(images)))
    except NonFiniteOutputError as error:
        raise NonFiniteOutputError(f"{error} (indices {start}-{start + len(images) - 1}); the denoiser in "
                                   f"{denoiser_dir} is probably damaged") from None


def purify_dataset(
    data: LabelledImages,
    denoiser_dir: PathLike,
    out_beton: PathLike,
    *,
    config: PurifyConfig = PurifyConfig(),
    work_dir: Optional[PathLike] = None,
    batch_size: int = 256,
    chunk_size: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    progress: bool = True,
    also_npz: Optional[PathLike] = None,
    keep_work: bool = False,
) -> Path:
    """Purify every image of ``data`` with the denoiser in ``denoiser_dir`` and write ``out_beton``.

    Resumable: rerunning with the same inputs continues from the finished chunks in ``work_dir``.
    If the output already holds this job's cache key (beton manifest, or the ``.npz``), nothing is done.
    Everything that can be checked is checked before any image is purified: the output location,
    the ffcv extra (for a beton), the denoiser files and weights, the image size and the device.
    A lock on the output refuses a second run on the same output while this one runs.

    Args:
        data: the (possibly poisoned) training set; sample ``i`` is purified with noise from
            ``(config.seed, i)``, labels are carried through unchanged.
        denoiser_dir: a directory written by `train_denoiser` / `save_denoiser`.
        out_beton: destination: a ``.beton`` (needs ffcv; its manifest records the config, the
            denoiser hash and the cache key) or a ``.npz`` (``images``, ``labels``; no ffcv needed).
        config: purification settings (default: the ``default`` recipe's).
        work_dir: where chunks are kept (default ``<out_beton>.work`` next to the output). It must be
            new, empty or hold only this kind of job's files; only the job's own files are ever deleted.
        batch_size: images per U-Net call. At equal batch size and device the result is bit-identical;
            across batch sizes on CPU a rare pixel can differ by one grey level (CPU kernels pick
            algorithms by batch shape; measured: at most a few pixels per million).
        chunk_size: images per saved chunk (default ``max(batch_size, 1024)``; fixed by the first run).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA if available, else CPU).
        progress: show a progress bar (images/s).
        also_npz: also write ``images``/``labels`` arrays to this ``.npz``.
        keep_work: keep the chunk files after success (default: delete them).

    Returns:
        The output path.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if len(data) == 0:
        raise ValueError("nothing to purify: the dataset is empty")
    out_beton = Path(out_beton)
    npz_only = out_beton.suffix == ".npz"
    if npz_only and also_npz is not None:
        raise ValueError(f"the output {out_beton} is already an .npz: also_npz (--npz) is for a .beton output")
    if not npz_only:
        require_ffcv()
    needed = data.images.nbytes + 8 * len(data)
    check_output(out_beton, needed, what="output")
    if also_npz is not None:
        check_output(also_npz, needed, what="--npz output")
    device = resolve_device(device)
    key = cache_key(data, config, denoiser_dir)
    if _is_up_to_date(out_beton, key, npz_only):
        _log.info("%s is up to date (cache key %s); skipping purification", out_beton, key[:12])
        if also_npz is not None and not Path(also_npz).is_file():
            raise FileNotFoundError(f"{out_beton} is cached but {also_npz} is missing; delete the beton to redo")
        return out_beton
    unet, scheduler = load_denoiser(denoiser_dir, device=device)
    check_image_size(unet, data, denoiser_dir)
    purifier = Purifier(unet, scheduler, config, device=device)
    check_serves_t_star(denoiser_dir, purifier.t_star)
    default_work = work_dir is None
    work = Path(work_dir) if work_dir is not None else out_beton.with_name(out_beton.name + ".work")
    with output_lock(out_beton):
        remove_stale_temporaries(out_beton)
        outputs = (out_beton,) + (() if also_npz is None else (Path(also_npz),))
        chunk = _prepare_work_dir(work, key, len(data), int(chunk_size or max(batch_size, 1024)), outputs)
        _purify_chunks(purifier, data, work, chunk, batch_size, progress, denoiser_dir)
        purified = _assemble(work, _chunk_ranges(len(data), chunk), data.image_shape)
        result = LabelledImages(purified, data.labels.copy(), data.num_classes)
        if npz_only:
            save_npz(out_beton, images=result.images, labels=result.labels, cache_key=np.array(key))
        else:
            if also_npz is not None:
                save_npz(also_npz, images=result.images, labels=result.labels, cache_key=np.array(key))
            write_beton(out_beton, result, metadata=purification_metadata(purifier, denoiser_dir, key),
                        progress=progress, lock=False)
        if not keep_work:
            remove_job_files(work, remove_dir=default_work)
    return out_beton


def purification_metadata(purifier: Purifier, denoiser_dir: PathLike, key: str) -> dict[str, Any]:
    """What a purified beton's manifest records: the resolved settings, the denoiser and the cache key."""
    return {
        "purification": purifier.config.to_dict(),
        "t_star": purifier.t_star,
        "timesteps": len(purifier.timesteps),
        "denoiser_dir": str(denoiser_dir),
        "denoiser_sha256": denoiser_hash(denoiser_dir),
        "cache_key": key,
    }


def _is_up_to_date(out: Path, key: str, npz_only: bool) -> bool:
    if not out.is_file():
        return False
    if npz_only:
        try:
            with np.load(out, allow_pickle=False) as archive:
                return "cache_key" in archive.files and str(archive["cache_key"]) == key
        except (OSError, ValueError):
            return False
    return read_manifest(out).get("metadata", {}).get("cache_key") == key


def _purify_chunks(purifier: Purifier, data: LabelledImages, work: Path, chunk: int, batch_size: int,
                   progress: bool, denoiser_dir: PathLike) -> None:
    ranges = _chunk_ranges(len(data), chunk)
    shape = data.image_shape
    todo = [(a, b) for a, b in ranges if _load_chunk(_chunk_path(work, a, b), (b - a, *shape)) is None]
    done_images = len(data) - sum(b - a for a, b in todo)
    if done_images:
        _log.info("resuming: %d of %d images already purified in %s", done_images, len(data), work)
    bar = tqdm(total=len(data), initial=done_images, unit="img", desc="purifying", disable=not progress)
    start_time = time.perf_counter()
    try:
        for a, b in todo:
            parts = []
            for s in range(a, b, batch_size):
                stop = min(s + batch_size, b)
                parts.append(_purified_chunk(purifier, data.images[s:stop], s, denoiser_dir))
                bar.update(stop - s)
                rate = (bar.n - done_images) / max(time.perf_counter() - start_time, 1e-9)
                bar.set_postfix(img_per_s=f"{rate:.2f}")
            _save_atomic_npy(_chunk_path(work, a, b), np.concatenate(parts))
    finally:
        bar.close()


def _assemble(work: Path, ranges: list[tuple[int, int]], shape: tuple[int, ...]) -> np.ndarray:
    """The chunks in index order, every sample checked present exactly once, as a memory map of
    ``WORK/assembled.npy`` (filled chunk by chunk: memory holds one chunk, not the dataset)."""
    total = ranges[-1][1] if ranges else 0
    path = work / ASSEMBLED_NAME
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(total, *shape))
    for a, b in ranges:
        array = _load_chunk(_chunk_path(work, a, b), (b - a, *shape))
        if array is None:
            raise RuntimeError(f"chunk {a}:{b} missing from {work} after purification")
        out[a:b] = array
    out.flush()
    return np.load(path, mmap_mode="r")

"""Purify a whole dataset offline in one process, resumably, to an FFCV beton or a ``.npz``.

The one-process case of the shard engine (`eclipse_loader.purify.engine`): the dataset is cut into
fixed index blocks, and each finished block is saved as ``WORK/shard_<start>_<stop>.npz`` under a
temporary name and renamed, so a shard file exists complete or not at all. A run killed at any point
(even SIGKILL) and started again with the same inputs skips the finished shards and computes the rest;
because every sample's noise depends only on ``(seed, index)``, the result equals an uninterrupted
run's (and a distributed run's: its shards are interchangeable).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from ..data.images import LabelledImages
from ..denoiser.io import check_serves_t_star, denoiser_hash, load_denoiser
from ..output_files import output_lock, remove_stale_temporaries
from .engine import cache_key, check_outputs, is_up_to_date, purification_metadata, purify_block, write_purified
from .purifier import Purifier, PurifyConfig
from .shards import pending_blocks, prepare_job, save_shard
from .workdir import WorkDirMismatchError, remove_job_files

PathLike = Union[str, os.PathLike]
__all__ = ["WorkDirMismatchError", "cache_key", "check_image_size", "purify_dataset", "resolve_device"]
_log = logging.getLogger(__name__)


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

    Resumable: rerunning with the same inputs continues from the finished shards in ``work_dir``.
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
        work_dir: where the shards are kept (default ``<out_beton>.work`` next to the output). It must be
            new, empty or hold only this kind of job's files; only the job's own files are ever deleted.
        batch_size: images per U-Net call. At equal batch size and device the result is bit-identical;
            across batch sizes on CPU a rare pixel can differ by one grey level (CPU kernels pick
            algorithms by batch shape; measured: at most a few pixels per million).
        chunk_size: images per shard file (default ``max(batch_size, 1024)``; fixed by the first run).
        device: ``"cpu"``, ``"cuda"``... (default: CUDA if available, else CPU).
        progress: show a progress bar (images/s).
        also_npz: also write ``images``/``labels`` arrays to this ``.npz``.
        keep_work: keep the shard files after success (default: delete them).

    Returns:
        The output path.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if len(data) == 0:
        raise ValueError("nothing to purify: the dataset is empty")
    out_beton = check_outputs(out_beton, data, also_npz)
    device = resolve_device(device)
    denoiser_sha = denoiser_hash(denoiser_dir)
    key = cache_key(data, config, denoiser_dir, denoiser_sha)
    if is_up_to_date(out_beton, key, also_npz):
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
        shard_size = prepare_job(work, key, len(data), int(chunk_size or max(batch_size, 1024)), outputs)
        _purify_pending(purifier, data.images, work, shard_size, batch_size, progress, denoiser_dir)
        metadata = purification_metadata(config, purifier.t_star, purifier.timesteps, denoiser_dir, denoiser_sha, key)
        write_purified(work, data, out_beton, key, metadata, also_npz=also_npz, progress=progress)
        if not keep_work:
            remove_job_files(work, remove_dir=default_work)
    return out_beton


def _purify_pending(purifier: Purifier, images: np.ndarray, work: Path, shard_size: int, batch_size: int,
                    progress: bool, denoiser_dir: PathLike) -> None:
    """Purify every block of ``images`` whose shard is missing in ``work`` and save it as a shard."""
    todo = pending_blocks(work, len(images), shard_size, tuple(images.shape[1:]))
    done_images = len(images) - sum(b - a for a, b in todo)
    if done_images:
        _log.info("resuming: %d of %d images already purified in %s", done_images, len(images), work)
    bar = tqdm(total=len(images), initial=done_images, unit="img", desc="purifying", disable=not progress)
    start_time = time.perf_counter()

    def advance(count: int) -> None:
        bar.update(count)
        rate = (bar.n - done_images) / max(time.perf_counter() - start_time, 1e-9)
        bar.set_postfix(img_per_s=f"{rate:.2f}")

    try:
        for a, b in todo:
            save_shard(work, np.arange(a, b), purify_block(purifier, images[a:b], a, batch_size, denoiser_dir, advance))
    finally:
        bar.close()

"""The one resumable purification engine: index blocks purified into shard files, then one output.

`purify_dataset` (one process) and `purify_distributed` (one rank per process, Lightning) share it:

1. `cache_key` names the job (input pixels and labels, settings, denoiser); an output that already
   holds it is left alone (`is_up_to_date`).
2. `eclipse_loader.purify.shards.prepare_job` fixes the block size in the work directory's manifest;
   every missing block is purified by `purify_block` and saved as one shard file.
3. `write_purified` checks that every index is present exactly once and writes the ``.npz`` or the
   beton (its manifest records `purification_metadata`).

Sample ``i``'s noise depends only on ``(seed, i)``, so a resumed, sharded or distributed run writes
the same bytes as an uninterrupted single-process one at equal batch size.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from ..data.images import LabelledImages
from ..denoiser.io import denoiser_hash
from ..storage.beton import read_manifest, require_ffcv, write_beton
from ..output_files import check_output, save_npz
from .purifier import NonFiniteOutputError, Purifier, PurifyConfig
from .shards import ShardAssemblyError, collect_shards, read_job
from .workdir import WorkDirMismatchError

PathLike = Union[str, os.PathLike]
_log = logging.getLogger(__name__)


def cache_key(data: LabelledImages, config: PurifyConfig, denoiser_dir: PathLike,
              denoiser_sha: Optional[str] = None) -> str:
    """Content hash (sha256 hex) of the input pixels and labels, the config and the denoiser files
    (``denoiser_sha``: `denoiser_hash` of ``denoiser_dir`` when the caller has it already)."""
    h = hashlib.sha256()
    h.update(data.fingerprint().encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update((denoiser_sha or denoiser_hash(denoiser_dir)).encode())
    return h.hexdigest()


def purification_metadata(config: PurifyConfig, t_star: int, timesteps: Sequence[int], denoiser_dir: PathLike,
                          denoiser_sha: str, key: str) -> dict[str, Any]:
    """What a purified beton's manifest records: the resolved settings, the denoiser and the cache key."""
    return {
        "purification": config.to_dict(),
        "t_star": int(t_star),
        "timesteps": len(timesteps),
        "denoiser_dir": str(denoiser_dir),
        "denoiser_sha256": denoiser_sha,
        "cache_key": key,
    }


def check_outputs(out: PathLike, data: LabelledImages, also_npz: Optional[PathLike] = None) -> Path:
    """Check, before any work, that ``out`` (and ``also_npz``) can be written; returns ``out`` as a Path.

    A beton needs the ffcv extra; a ``.npz`` output takes no ``also_npz``.
    """
    out = Path(out)
    if out.suffix == ".npz" and also_npz is not None:
        raise ValueError(f"the output {out} is already an .npz: also_npz (--npz) is for a .beton output")
    if out.suffix != ".npz":
        require_ffcv()
    needed = data.images.nbytes + 8 * len(data)
    check_output(out, needed, what="output")
    if also_npz is not None:
        check_output(also_npz, needed, what="--npz output")
    return out


def is_up_to_date(out: Path, key: str, also_npz: Optional[PathLike] = None) -> bool:
    """Whether ``out`` (a ``.npz``, or a beton by its manifest) already holds the job ``key``.

    Raises:
        FileNotFoundError: ``out`` is up to date but ``also_npz`` is missing.
    """
    if not out.is_file():
        return False
    if out.suffix == ".npz":
        try:
            with np.load(out, allow_pickle=False) as archive:
                done = "cache_key" in archive.files and str(archive["cache_key"]) == key
        except (OSError, ValueError):
            return False
    else:
        done = read_manifest(out).get("metadata", {}).get("cache_key") == key
    if done:
        _log.info("%s is up to date (cache key %s); skipping purification", out, key[:12])
        if also_npz is not None and not Path(also_npz).is_file():
            raise FileNotFoundError(f"{out} is cached but {also_npz} is missing; delete the beton to redo")
    return done


def purify_block(purifier: Purifier, images: np.ndarray, start: int, batch_size: int, denoiser_dir: PathLike,
                 on_batch: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """Purify the block of ``images`` at dataset positions ``start, start + 1, ...`` in U-Net batches
    of ``batch_size``; ``on_batch(n)`` is called after each batch of ``n`` images."""
    parts = []
    for s in range(0, len(images), batch_size):
        batch = images[s : s + batch_size]
        first = start + s
        try:
            parts.append(purifier.purify(batch, range(first, first + len(batch))))
        except NonFiniteOutputError as error:
            raise NonFiniteOutputError(f"{error} (indices {first}-{first + len(batch) - 1}); the denoiser in "
                                       f"{denoiser_dir} is probably damaged") from None
        if on_batch is not None:
            on_batch(len(batch))
    return np.concatenate(parts)


def write_purified(work: Path, data: LabelledImages, out: Path, key: str, metadata: dict[str, Any], *,
                   also_npz: Optional[PathLike] = None, progress: bool = True) -> Path:
    """Write the shards of ``work`` (labels from ``data``) in index order to ``out``: a ``.npz``
    (``images``, ``labels``, ``cache_key``) or a beton with ``metadata`` (and the ``.npz`` ``also_npz``).

    The caller holds `output_lock` on ``out``. Nothing is written unless the job manifest matches
    ``data`` and ``key`` and every index is present exactly once (`collect_shards`).
    """
    job = read_job(work)
    if job.get("num_samples") != len(data):
        raise ShardAssemblyError(f"{work} is a job over {job.get('num_samples')} samples, the dataset has {len(data)}")
    if job.get("cache_key") != key:
        raise WorkDirMismatchError(f"{work} holds shards of another job (cache key {str(job.get('cache_key'))[:12]}"
                                   f"..., this job {key[:12]}...); use another work dir or delete it")
    result = LabelledImages(collect_shards(work, len(data), data.image_shape), data.labels.copy(), data.num_classes)
    arrays = {"images": result.images, "labels": result.labels, "cache_key": np.array(key)}
    if out.suffix == ".npz":
        save_npz(out, **arrays)
        return out
    if also_npz is not None:
        save_npz(also_npz, **arrays)
    return write_beton(out, result, metadata=metadata, progress=progress, lock=False)

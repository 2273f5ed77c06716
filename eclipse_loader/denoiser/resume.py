"""The work directory of a denoiser training job: its identity (``job.json``) and its last checkpoint.

A rerun of the same job (same data, preset and optimisation settings) resumes from the last
checkpoint; ``max_steps`` is not part of the identity, so a finished job can be extended. A work
directory that holds another job's checkpoint is refused, never overwritten. Nothing is deleted.
Torch-free on purpose.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

PathLike = Union[str, os.PathLike]
JOB_NAME = "job.json"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"


class TrainingWorkDirError(ValueError):
    """The work directory cannot serve this job (another job's checkpoint, a link, or a file)."""


def default_work_dir(out_dir: PathLike) -> Path:
    """``OUTPUT.train`` beside the output directory (kept out of it: checkpoints are pickles)."""
    out = Path(out_dir)
    return out.with_name(out.name + ".train")


def open_training_work_dir(work_dir: PathLike, job: dict[str, Any], resume: bool = True) -> Optional[Path]:
    """Create or check ``work_dir`` for ``job``; returns the checkpoint to resume from, if any.

    Args:
        work_dir: the job's directory (``job.json``, ``checkpoints/``, ``logs/``).
        job: JSON-able identity of the job (everything that must match for a resume to be sound).
        resume: False starts afresh even when a checkpoint of the same job is there (it is
            overwritten by this run's checkpoints).

    Raises:
        TrainingWorkDirError: ``work_dir`` is a symbolic link or a file, or holds a checkpoint of a
            different job (the message names the settings that differ).
    """
    work = Path(work_dir)
    if work.is_symlink():
        raise TrainingWorkDirError(f"work dir {work} is a symbolic link; give a real directory")
    if work.exists() and not work.is_dir():
        raise TrainingWorkDirError(f"work dir {work} exists and is not a directory")
    job_file = work / JOB_NAME
    last = work / CHECKPOINT_DIR / LAST_CHECKPOINT
    if job_file.is_file():
        try:
            previous = json.loads(job_file.read_text())
        except (OSError, ValueError) as error:
            raise TrainingWorkDirError(f"{job_file} is unreadable ({error}); give another --work-dir") from None
        differ = sorted(k for k in set(previous) | set(job) if previous.get(k) != job.get(k))
        if differ and last.exists():
            shown = ", ".join(f"{k}: {previous.get(k)!r} there, {job.get(k)!r} now" for k in differ)
            raise TrainingWorkDirError(f"work dir {work} holds a checkpoint of another training job ({shown}); "
                                       "give another --work-dir, or delete it to start afresh")
    elif work.is_dir() and any(work.iterdir()):
        shown = ", ".join(sorted(p.name for p in work.iterdir())[:5])
        raise TrainingWorkDirError(f"work dir {work} is not empty and holds no training job ({shown}); "
                                   "give an empty or new --work-dir")
    work.mkdir(parents=True, exist_ok=True)
    tmp = work / f".{JOB_NAME}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(job, indent=2, sort_keys=True))
    os.replace(tmp, job_file)  # every DDP rank writes the same content: the race is harmless
    return last if resume and last.is_file() else None

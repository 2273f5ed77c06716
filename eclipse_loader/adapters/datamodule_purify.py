"""The purification step of `EclipseDataModule`: its settings and the cached purified file."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, Union

from ..data.images import LabelledImages
from ..recipes import Recipe
from .lightning_loaders import wait_for_file

if TYPE_CHECKING:  # the purifier imports diffusers: only when purifying
    from ..purify.purifier import PurifyConfig

PurifySteps = Union[int, Literal["full"], None]
"""A positive number of reverse steps, ``"full"`` (all t* of them) or None (the recipe's), as ``--steps``."""


def check_purify_steps(steps: PurifySteps) -> PurifySteps:
    """``steps`` unchanged, or ValueError naming ``purify_steps`` (0 is refused: the full chain is ``"full"``)."""
    if steps is None or steps == "full" or (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
        return steps
    hint = " (the full chain is purify_steps='full')" if steps == 0 else ""
    raise ValueError(f"purify_steps must be a positive integer, 'full' or None (the recipe's), got {steps!r}{hint}")


RepairThreshold = Union[int, Literal["off"], None]
"""Grey levels of the outlier-pixel repair, ``"off"`` (no repair) or None (the recipe's), as ``--repair-threshold``
and ``--no-repair``."""


def check_repair_threshold(threshold: RepairThreshold) -> RepairThreshold:
    """``threshold`` unchanged, or ValueError naming ``repair_threshold`` (no negative sentinel: off is ``"off"``)."""
    if threshold is None or threshold == "off" or (
            isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 0):
        return threshold
    hint = " (no repair is repair_threshold='off')" if isinstance(threshold, int) and threshold < 0 else ""
    raise ValueError(f"repair_threshold must be a non-negative integer, 'off' or None (the recipe's), "
                     f"got {threshold!r}{hint}")


def datamodule_purify_config(recipe: Recipe, steps: PurifySteps, repair_threshold: RepairThreshold, sampler: str,
                             seed: int) -> PurifyConfig:
    """The recipe's purification settings, overridden by the DataModule's arguments."""
    off = check_repair_threshold(repair_threshold) == "off"
    return recipe.purify_config(steps=check_purify_steps(steps), repair=not off, sampler=sampler, seed=seed,
                                repair_threshold=None if off else repair_threshold)  # type: ignore[arg-type]


def purified_file(data: LabelledImages, config: PurifyConfig, denoiser: str, cache_dir: Path, ffcv: bool,
                  write: bool, batch_size: int, device: str) -> Path:
    """The cached purified beton (``ffcv``) or .npz of ``data``; computed here when ``write`` (one process per node).

    With one process, the work happens in ``prepare_data``. Under DDP it happens in ``setup``:
    local rank zero purifies while the other ranks poll the file system for the result, so no
    collective (whose timeout is 30 minutes by default) waits on a long purification. A failure
    leaves ``PATH.failed`` with the error, which the waiting ranks raise.
    """
    from ..purify.run import cache_key, purify_dataset

    key = cache_key(data, config, denoiser)
    suffix = ".beton" if ffcv else ".npz"  # the torch backend needs no ffcv
    path = cache_dir / "purified" / f"{key[:24]}{suffix}"
    failed = path.with_name(path.name + ".failed")
    if path.exists():
        return path
    if not write:
        return wait_for_file(path, failed)
    failed.unlink(missing_ok=True)
    try:
        return purify_dataset(data, denoiser, path, config=config, batch_size=batch_size, device=device)
    except BaseException as error:
        failed.parent.mkdir(parents=True, exist_ok=True)
        failed.write_text(f"{type(error).__name__}: {error}")
        raise

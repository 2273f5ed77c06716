"""The loaders behind `EclipseDataModule`: its recipe, which backend, one loader per split, and the
wait of the ranks that do not purify.

FFCV when it imports (sharded with ``distributed=True`` when the world size is above 1), otherwise
the pure-torch `TorchEpochLoader` with the same semantics (a warning says so once). Training loaders
apply flip, translation and the compensation; evaluation loaders (val, test, predict) apply none,
keep the stored order and every sample.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Union

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from ..loading.torch_loader import TorchEpochLoader
from ..recipes import Recipe, load_recipe

Backend = Literal["auto", "ffcv", "torch"]
#: RGB images only: mean/std give one value per channel
CHANNELS = 3
_FALLBACK_WARNED = False


def ffcv_available() -> bool:
    """True when ffcv (and numba) can be imported here."""
    try:
        import ffcv  # noqa: F401
        import numba  # noqa: F401
    except Exception:  # ImportError, or a broken native build (missing libopencv/libturbojpeg)
        return False
    return True


def resolve_backend(backend: Backend) -> str:
    """``"ffcv"`` or ``"torch"`` for a requested backend; ``"auto"`` falls back to torch (warning once)."""
    global _FALLBACK_WARNED
    if backend not in ("auto", "ffcv", "torch"):
        raise ValueError(f"backend must be 'auto', 'ffcv' or 'torch', got {backend!r}")
    if backend == "torch":
        return "torch"
    if ffcv_available():
        return "ffcv"
    if backend == "ffcv":
        raise ImportError("backend='ffcv' but ffcv cannot be imported: pip install 'eclipse-loader[ffcv]'")
    if not _FALLBACK_WARNED:
        warnings.warn("ffcv is not importable here: EclipseDataModule falls back to torch DataLoaders "
                      "(same augmentation and compensation, slower)", RuntimeWarning, stacklevel=4)
        _FALLBACK_WARNED = True
    return "torch"


def datamodule_recipe(recipe: str, purify: bool) -> Recipe:
    """The recipe of an `EclipseDataModule`: a name or a ``.json`` file; ValueError for a recipe that
    needs steps the DataModule does not run (they would otherwise be silently skipped)."""
    chosen = load_recipe(recipe)
    offline = [name for name, unset in (("grayscale", False), ("jpeg_quality", None), ("chroma_block", None),
                                        ("chroma_swap", False), ("augment", None), ("mix_trusted", False))
               if getattr(chosen, name) != unset]
    if purify and not chosen.purification:
        offline.append("purification=false (with purify=True)")
    if offline:
        raise ValueError(f"recipe {recipe!r} sets {', '.join(offline)}, which EclipseDataModule does not apply; "
                         "prepare the data with `eclipse-loader purify --recipe` and give the beton as train")
    return chosen


def check_channels(name: str, values: Optional[Sequence[float]]) -> Optional[tuple[float, ...]]:
    """``values`` as a tuple of one float per RGB channel (None stays None); ValueError naming ``name``."""
    if values is None:
        return None
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {CHANNELS} numbers (one per RGB channel), got {values!r}") from None
    if len(result) != CHANNELS:
        raise ValueError(f"{name} must have {CHANNELS} values (one per RGB channel), got {len(result)}: {values!r}")
    return result


def build_loader(
    backend: str,
    data: Union[Path, LabelledImages],
    batch_size: int,
    *,
    train: bool,
    augment: AugmentConfig,
    seed: int,
    num_workers: Optional[int],
    rank: int = 0,
    world_size: int = 1,
    local_world_size: int = 1,
) -> Any:
    """One split's loader: shuffled, augmented and ``drop_last`` when ``train``, else plain and complete.

    Args:
        backend: ``"ffcv"`` (``data`` is a beton path) or ``"torch"`` (``data`` is in memory).
        augment: the training augmentation; also carries the normalisation every split applies.
    """
    if backend == "ffcv":
        from .ffcv_loaders import make_ffcv_loader

        return make_ffcv_loader(
            data, batch_size, augment=augment if train else None, normalize=augment.normalization, shuffle=train,
            drop_last=train, seed=seed, num_workers=num_workers, distributed=world_size > 1,
            local_world_size=local_world_size,
        )
    return TorchEpochLoader(
        data, batch_size, augment=augment if train else None, normalize=augment.normalization, shuffle=train,
        drop_last=train, seed=seed, rank=rank, world_size=world_size, num_workers=min(num_workers or 0, 2),
    )


def wait_for_file(path: Path, failed: Path, poll_s: float = 5.0) -> Path:
    """Wait (without a collective, so without a timeout) for another process to write ``path``; raise
    RuntimeError with its message if that process writes ``failed`` instead."""
    started = time.time()
    while not path.exists():
        if failed.exists() and failed.stat().st_mtime >= started:
            raise RuntimeError(f"purification on local rank zero failed: {failed.read_text()}")
        time.sleep(poll_s)
    return path


def check_image_sizes(data: dict[str, Union[Path, LabelledImages]], sources: dict[str, Optional[str]]) -> None:
    """Every split must hold images of the train split's size (a model sees one input size)."""
    from ..storage.beton import read_manifest

    def size(split_data: Union[Path, LabelledImages]) -> Optional[tuple[int, ...]]:
        if isinstance(split_data, LabelledImages):
            return tuple(split_data.image_shape)
        shape = read_manifest(split_data).get("image_shape")
        return tuple(shape) if shape else None

    sizes = {split: size(split_data) for split, split_data in data.items()}
    reference = sizes.get("train")
    for split, shape in sizes.items():
        if reference is not None and shape is not None and shape != reference:
            raise ValueError(f"the {split} images ({sources[split]}) are {shape[0]}x{shape[1]}, the train images "
                             f"({sources['train']}) {reference[0]}x{reference[1]}: give every split one image size")

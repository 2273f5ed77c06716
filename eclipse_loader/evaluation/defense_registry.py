"""The defences the evaluation harness compares, each as (offline steps, training augmentation).

Offline steps run once on the training set: ``"jpeg10"``, ``"grayscale"``, ``"repair-outliers"``
(isolated outlier pixels replaced by their neighbours' median), ``"purify"`` (the diffusion
purification with the defence's `PurifySettings`; the harness supplies the purifier). The augmentation
runs every epoch; all defences keep the standard crop (translate by 4) and flip, so they differ only in
what they add. Test images are never transformed.

``auto`` (issue 18) is not a fixed entry of `DEFENSES`: inside each harness cell `resolve_auto` runs the
defence selection (`eclipse_loader.select`) on that cell's poisoned training set and the protocol's
sparse set only, and returns the chosen candidate as a `Defense` named ``"auto"``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Optional, Union

import numpy as np

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from ..purify.outliers import repair_isolated_pixels
from ..recipes import RECIPES
from ..select.colour import CHROMA_BLOCKS, chroma, swap_chroma
from .baselines import grayscale, jpeg

if TYPE_CHECKING:
    from ..select.candidates import Candidate
    from ..select.offline import PurifyFn
    from ..select.proxy import ProxySettings
    from ..select.run import Selection
    from ..select.stats import TieBreak

OfflineStep = Callable[[LabelledImages], LabelledImages]

_DEFAULT, _PAPER = RECIPES["default"], RECIPES["paper"]
CROP_FLIP = AugmentConfig(flip=True, translate_padding=4, compensate=False)
GAUSSIAN_ONLY = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=0.0, sigma=0.05)
COMPENSATION = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=_PAPER.p_gray, sigma=_PAPER.sigma)
DEFAULT_COMPENSATION = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=_DEFAULT.p_gray,
                                     sigma=_DEFAULT.sigma)


@dataclass(frozen=True)
class PurifySettings:
    """What a defence fixes about its purification; ``None`` takes the protocol's value.

    Attributes:
        t_star: forward noise steps (needs a denoiser trained up to ``t_star - 1``).
        steps: network calls on the way back.
        draws: independent noise draws purified and averaged (cost grows linearly).
        denoiser_t_max: highest timestep of the denoiser to use (None: the protocol's denoiser).
    """

    t_star: Optional[int] = None
    steps: Optional[int] = None
    draws: int = 1
    denoiser_t_max: Optional[int] = None

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws must be >= 1, got {self.draws}")


@dataclass(frozen=True)
class Defense:
    """A defence: ``offline`` step names applied in order to the training set, then ``augment`` online.

    ``extra_augment``: an online augmentation the `AugmentConfig` cannot express, applied to each uint8
    batch before crop/flip and compensation: None or ``"rsk-ff"`` (`eclipse_loader.select.augment.rsk_ff_keyed`;
    the victim's training loop must apply it, see `batch_transform`).
    """

    name: str
    offline: tuple[str, ...]
    augment: AugmentConfig
    description: str
    purify: PurifySettings = field(default_factory=PurifySettings)
    extra_augment: Optional[str] = None

    @property
    def purifies(self) -> bool:
        return "purify" in self.offline


DEFENSES: dict[str, Defense] = {d.name: d for d in (
    Defense("none", (), CROP_FLIP, "standard training (crop + flip)"),
    Defense("jpeg10", ("jpeg10",), CROP_FLIP, "JPEG quality 10 on the training set"),
    Defense("grayscale", ("grayscale",), CROP_FLIP, "training images converted to grayscale"),
    Defense("jpeg10+grayscale", ("grayscale", "jpeg10"), CROP_FLIP, "grayscale, then JPEG quality 10"),
    Defense("gaussian-noise", (), GAUSSIAN_ONLY, "Gaussian noise sigma 0.05 redrawn every epoch"),
    Defense("purification", ("purify",), CROP_FLIP, "diffusion purification only"),
    Defense("compensation", (), COMPENSATION, "corruption compensation only (grayscale p=0.4 + noise 0.05)"),
    Defense("eclipse-paper", ("purify",), COMPENSATION,
            "ECLIPSE as published: purification at the protocol's t* (100) + compensation p_gray 0.4, sigma 0.05"),
    Defense("eclipse", ("repair-outliers", "purify"), DEFAULT_COMPENSATION,
            f"the product default (recipe 'default'): outlier repair, purification at t*={_DEFAULT.t_star} with "
            f"{_DEFAULT.purify_steps} steps, compensation p_gray {_DEFAULT.p_gray}, sigma {_DEFAULT.sigma}",
            PurifySettings(t_star=_DEFAULT.t_star, steps=_DEFAULT.purify_steps, denoiser_t_max=_DEFAULT.denoiser_t_max)),
)}


JPEG_QUALITIES = (10, 30)
AUTO = "auto"
_AUTO_SELECTION = ("chosen per cell by measuring candidate defences with a proxy on the sparse set "
                   "(eclipse_loader.select; half the sparse set trains its denoiser, half validates)")
AUTO_DESCRIPTION = _AUTO_SELECTION + "; a lighter candidate within 1 point of the best wins the tie"
#: ``auto`` with the choice rule's ``tie_break="best"`` (the best candidate wins, no tie to a lighter one); it
#: reads the same proxy runs as ``auto``
AUTO_BEST = "auto-best"
AUTO_BEST_DESCRIPTION = _AUTO_SELECTION + "; the best candidate wins (tie_break='best')"
#: ``candidate:NAME``: one selection candidate as a fixed defence, purifying with auto's denoiser
CANDIDATE_PREFIX = "candidate:"


def offline_steps(purify: Optional[OfflineStep] = None) -> dict[str, OfflineStep]:
    """Name -> function of every offline step; ``purify`` is the harness's purifier (None: unavailable)."""
    steps: dict[str, OfflineStep] = {f"jpeg{q}": (lambda d, q=q: jpeg(d, quality=q)) for q in JPEG_QUALITIES}
    steps.update({f"chroma{b}": (lambda d, b=b: chroma(d, block=b)) for b in CHROMA_BLOCKS})
    steps.update({"grayscale": grayscale, "chroma-swap": swap_chroma, "repair-outliers": repair_outliers})
    if purify is not None:
        steps["purify"] = purify
    return steps


def apply_offline(defense: Defense, data: LabelledImages, steps: dict[str, OfflineStep]) -> LabelledImages:
    """Run ``defense``'s offline steps on ``data``; a step missing from ``steps`` is an error."""
    for name in defense.offline:
        if name not in steps:
            raise KeyError(f"defence {defense.name!r} needs the offline step {name!r}, which was not provided")
        data = steps[name](data)
    return data


def repair_outliers(data: LabelledImages) -> LabelledImages:
    """The ``"repair-outliers"`` step: `repair_isolated_pixels` at its default threshold."""
    images, _ = repair_isolated_pixels(data.images)
    return LabelledImages(images, data.labels, data.num_classes)


def candidate_defense(candidate: Candidate, steps: Optional[int] = None, name: str = AUTO) -> Defense:
    """The harness `Defense` running ``candidate`` (``steps``: purification network calls, None: the protocol's)."""
    if candidate.mix_trusted:
        raise ValueError("a harness defence cannot mix trusted images into the training set")
    if candidate.jpeg is not None and candidate.jpeg not in JPEG_QUALITIES:
        raise ValueError(f"the harness has JPEG qualities {JPEG_QUALITIES}, not {candidate.jpeg}")
    if candidate.chroma is not None and candidate.chroma not in CHROMA_BLOCKS:
        raise ValueError(f"the harness has chroma blocks {CHROMA_BLOCKS}, not {candidate.chroma}")
    offline = (("repair-outliers",) if candidate.repair else ()) + (("grayscale",) if candidate.grayscale else ())
    offline += (f"chroma{candidate.chroma}",) if candidate.chroma is not None else ()
    offline += ("chroma-swap",) if candidate.chroma_swap else ()
    offline += ((f"jpeg{candidate.jpeg}",) if candidate.jpeg is not None else ()) + (
        ("purify",) if candidate.t_star is not None else ())
    p_gray, sigma = candidate.p_gray_sigma
    augment = AugmentConfig(flip=True, translate_padding=4, compensate=p_gray > 0 or sigma > 0, p_gray=p_gray,
                            sigma=sigma)
    settings = PurifySettings() if candidate.t_star is None else PurifySettings(t_star=candidate.t_star, steps=steps)
    return Defense(name, offline, augment, f"{AUTO_DESCRIPTION}: {candidate.name}", settings, candidate.augment)


def split_sparse(sparse: LabelledImages, seed: int = 0, validation_fraction: float = 0.5
                 ) -> tuple[LabelledImages, LabelledImages]:
    """(validation part, denoiser part) of the sparse set, class balanced: ``auto``'s denoiser trains on the
    second, its selection validates on the first (the harness's own denoiser has seen all of it)."""
    from ..data.sparse import select_sparse_indices

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    chosen = select_sparse_indices(sparse, count=max(1, int(round(validation_fraction * len(sparse)))), seed=seed)
    rest = np.setdiff1d(np.arange(len(sparse)), chosen)
    return sparse.subset(chosen), sparse.subset(rest)


def resolve_auto(train: LabelledImages, sparse: LabelledImages, purify_fn: Optional[PurifyFn], *,
                 denoiser_images: Optional[np.ndarray], out_dir: Union[str, os.PathLike, None] = None, seed: int = 0,
                 proxy: Optional[ProxySettings] = None, budget_minutes: Optional[float] = None,
                 t_stars: Optional[tuple[int, ...]] = None, steps: Optional[int] = None,
                 min_per_class: Optional[int] = None, log: Optional[Callable[[str], None]] = None,
                 tie_break: TieBreak = "lighter", name: str = AUTO) -> tuple[Defense, Selection]:
    """``auto`` in one harness cell: select on ``train`` (the cell's poisoned set) with the ``sparse`` set as the
    trusted set (never the test set), excluding ``denoiser_images`` from validation; returns the chosen defence
    as a `Defense` named ``name`` and the `Selection` (for the report); ``tie_break`` goes to the choice rule."""
    from ..select.candidates import DEFAULT_T_STARS, default_candidates
    from ..select.proxy import ProxySettings
    from ..select.run import select_defense

    candidates = default_candidates(t_stars or DEFAULT_T_STARS, purification=purify_fn is not None)
    selection = select_defense(train, sparse, purify_fn, out_dir, candidates=candidates, proxy=proxy or ProxySettings(),
                               seed=seed, budget_minutes=budget_minutes, denoiser_images=denoiser_images,
                               try_trusted_mix=False, log=log, tie_break=tie_break,
                               **({} if min_per_class is None else {"min_per_class": min_per_class}))
    return candidate_defense(selection.chosen, steps, name=name), selection


def named_candidate(name: str, t_stars: Optional[tuple[int, ...]] = None) -> Candidate:
    """The selection candidate called ``name`` (e.g. ``"repair+purify400"``): one of the default candidates, or
    any combination `Candidate.from_name` reads (``"jpeg10+purify100"``); KeyError when it reads none."""
    from ..select.candidates import DEFAULT_T_STARS, Candidate, default_candidates

    by_name = {c.name: c for c in default_candidates(t_stars or DEFAULT_T_STARS)}
    if name in by_name:
        return by_name[name]
    try:
        return Candidate.from_name(name)
    except ValueError as error:
        raise KeyError(f"no selection candidate {name!r} ({error}); defaults: {', '.join(sorted(by_name))}") from None


def batch_transform(defense: Defense, seed: int) -> Optional[Callable[..., object]]:
    """The per-batch online step of ``defense.extra_augment`` as ``f(uint8 batch, dataset indices, epoch)``
    (None: nothing beyond the `AugmentConfig`); the victim's loop applies it before crop/flip."""
    if defense.extra_augment is None:
        return None
    if defense.extra_augment != "rsk-ff":
        raise ValueError(f"unknown extra augmentation {defense.extra_augment!r}")
    from ..select.augment import rsk_ff_keyed

    return lambda images, indices, epoch: rsk_ff_keyed(images, indices, seed, epoch)

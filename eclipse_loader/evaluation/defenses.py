"""The defences the evaluation harness compares, each as (offline steps, training augmentation).

Offline steps run once on the training set: ``"jpeg10"``, ``"grayscale"``, ``"repair-outliers"``
(isolated outlier pixels replaced by their neighbours' median), ``"purify"`` (the diffusion
purification with the defence's `PurifySettings`; the harness supplies the purifier). The augmentation
runs every epoch; all defences keep the standard crop (translate by 4) and flip, so they differ only in
what they add. Test images are never transformed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from ..purify.outliers import repair_isolated_pixels
from ..recipes import RECIPES
from .baselines import grayscale, jpeg

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
    """A defence: ``offline`` step names applied in order to the training set, then ``augment`` online."""

    name: str
    offline: tuple[str, ...]
    augment: AugmentConfig
    description: str
    purify: PurifySettings = field(default_factory=PurifySettings)

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


def offline_steps(purify: Optional[OfflineStep] = None) -> dict[str, OfflineStep]:
    """Name -> function of every offline step; ``purify`` is the harness's purifier (None: unavailable)."""
    steps: dict[str, OfflineStep] = {"jpeg10": lambda d: jpeg(d, quality=10), "grayscale": grayscale,
                                     "repair-outliers": repair_outliers}
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

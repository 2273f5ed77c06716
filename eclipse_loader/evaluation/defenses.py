"""The defences the evaluation harness compares, each as (offline steps, training augmentation).

Offline steps run once on the training set: ``"jpeg10"``, ``"grayscale"``, ``"purify"`` (the
diffusion purification; the harness supplies the purifier). The augmentation runs every epoch; all
defences keep the standard crop (translate by 4) and flip, so they differ only in what they add.
Test images are never transformed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from .baselines import grayscale, jpeg

OfflineStep = Callable[[LabelledImages], LabelledImages]

CROP_FLIP = AugmentConfig(flip=True, translate_padding=4, compensate=False)
GAUSSIAN_ONLY = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=0.0, sigma=0.05)
COMPENSATION = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=0.4, sigma=0.05)


@dataclass(frozen=True)
class Defense:
    """A defence: ``offline`` step names applied in order to the training set, then ``augment`` online."""

    name: str
    offline: tuple[str, ...]
    augment: AugmentConfig
    description: str

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
    Defense("eclipse", ("purify",), COMPENSATION, "ECLIPSE: diffusion purification + corruption compensation"),
)}


def offline_steps(purify: Optional[OfflineStep] = None) -> dict[str, OfflineStep]:
    """Name -> function of every offline step; ``purify`` is the harness's purifier (None: unavailable)."""
    steps: dict[str, OfflineStep] = {"jpeg10": lambda d: jpeg(d, quality=10), "grayscale": grayscale}
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

"""What a loader does to each sample: one frozen config shared by the FFCV and the torch loaders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..compensation.params import check_compensation_args
from ..recipes import DEFAULT_RECIPE
from ..machine import usable_cores  # noqa: F401 (re-exported: its home before eclipse_loader.machine)


@dataclass(frozen=True)
class Normalization:
    """The float conversion every loader ends with: ``(x / 255 - mean) / std`` per channel.

    Attributes:
        mean, std: per-channel values in [0, 1] units; both ``None`` (default) keeps [0, 1] floats (the
            paper's choice).
    """

    mean: Optional[tuple[float, ...]] = None
    std: Optional[tuple[float, ...]] = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")

    @property
    def scale(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Mean and std on the 0-255 scale, as ``torchvision.transforms.Normalize`` needs them."""
        mean = self.mean or (0.0, 0.0, 0.0)
        std = self.std or (1.0, 1.0, 1.0)
        return tuple(255.0 * m for m in mean), tuple(255.0 * s for s in std)


@dataclass(frozen=True)
class AugmentConfig:
    """Per-sample processing of a training loader (evaluation loaders apply none of it).

    Order, as in ECLIPSE's training code: horizontal flip, translation (RandomCrop with padding),
    then the corruption compensation (grayscale with ``p_gray``, Gaussian noise ``sigma``), then
    conversion to float ``(x / 255 - mean) / std``.

    Attributes:
        flip: random horizontal flip with probability 0.5.
        translate_padding: random shift of up to this many pixels, zero filled (0 disables).
        compensate: apply the corruption compensation.
        p_gray, sigma: compensation parameters (default: the ``default`` recipe's 0.2 / 0.03; the
            paper's 0.4 / 0.05 via recipe ``"paper"``).
        mean, std: per-channel normalisation in [0, 1] units; ``None`` keeps [0, 1] floats (the paper's choice).
    """

    flip: bool = True
    translate_padding: int = 4
    compensate: bool = True
    p_gray: float = DEFAULT_RECIPE.p_gray
    sigma: float = DEFAULT_RECIPE.sigma
    mean: Optional[tuple[float, float, float]] = None
    std: Optional[tuple[float, float, float]] = None

    def __post_init__(self) -> None:
        check_compensation_args(self.p_gray, self.sigma, 0)
        if self.translate_padding < 0:
            raise ValueError(f"translate_padding must be >= 0, got {self.translate_padding}")
        Normalization(self.mean, self.std)  # validates them

    @property
    def normalization(self) -> Normalization:
        """This config's ``mean``/``std`` (what its evaluation loaders use too)."""
        return Normalization(self.mean, self.std)


def resolve_normalization(normalize: Optional[Normalization], augment: Optional[AugmentConfig]) -> Normalization:
    """A loader's normalisation: ``normalize`` if given, else the augmentation's, else [0, 1] floats."""
    if normalize is None:
        return augment.normalization if augment is not None else Normalization()
    if not isinstance(normalize, Normalization):
        raise TypeError(f"normalize must be a Normalization(mean, std), got {type(normalize).__name__}"
                        + (" (use its .normalization)" if isinstance(normalize, AugmentConfig) else ""))
    return normalize

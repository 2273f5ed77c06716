"""Backdoor attacks to evaluate the backdoor defences (DataElixir, CGD): BadNets, Blended, SIG.

A trigger is a frozen dataclass with ``apply(images) -> images`` on uint8 NHWC arrays;
`poison_dataset` plants it in a training set (dirty-label all-to-one, or clean-label for SIG),
`triggered_test_set` builds the test set the attack success rate (ASR) is measured on, and
`attack_success_rate` scores a model on it.

* `BadNetsTrigger` (Gu et al. 2017): a ``size`` x ``size`` multi-colour patch (seeded), pasted at
  the bottom-right corner (DataElixir's default: a 4x4 colour patch at rows/cols 28-31, target 0,
  poison ratio 0.1 drawn from the non-target classes).
* `BlendedTrigger` (Chen et al. 2017): ``(1 - alpha) x + alpha * pattern``; the pattern defaults to
  seeded uniform noise (the original also used noise; Hello-Kitty is not shipped).
* `SIGTrigger` (Barni et al. 2019): additive horizontal sinusoid ``delta * sin(2 pi j f / W)``,
  clean-label: only target-class training images carry it, their labels are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Union

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages, validate_images
from ..nn_utils import eval_mode


class Trigger(Protocol):
    """Anything with ``apply(uint8 NHWC) -> uint8 NHWC``."""

    def apply(self, images: np.ndarray) -> np.ndarray: ...


def _check_uint8(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    validate_images(images)
    return images


@dataclass(frozen=True)
class BadNetsTrigger:
    """Paste a seeded ``size`` x ``size`` colour patch ``margin`` pixels from the bottom-right corner."""

    size: int = 4
    margin: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size < 1 or self.margin < 0:
            raise ValueError(f"size must be >= 1 and margin >= 0, got size={self.size}, margin={self.margin}")

    @property
    def patch(self) -> np.ndarray:
        """The uint8 ``(size, size, 3)`` patch (each pixel black or white per channel, seeded)."""
        rng = np.random.default_rng(self.seed)
        return (rng.integers(0, 2, (self.size, self.size, 3)) * 255).astype(np.uint8)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Boolean ``(H, W)`` mask of the patched pixels."""
        if self.size + self.margin > min(height, width):
            raise ValueError(f"a {self.size}px patch with margin {self.margin} does not fit a {height}x{width} image")
        m = np.zeros((height, width), dtype=bool)
        bottom, right = height - self.margin, width - self.margin
        m[bottom - self.size:bottom, right - self.size:right] = True
        return m

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = _check_uint8(images)
        out = images.copy()
        m = self.mask(*images.shape[1:3])
        out[:, m] = self.patch.reshape(-1, 3)
        return out


@dataclass(frozen=True)
class BlendedTrigger:
    """``round((1 - alpha) x + alpha * pattern)``; ``pattern`` (uint8 HWC) defaults to seeded noise."""

    alpha: float = 0.1
    pattern: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if self.pattern is not None:
            p = np.asarray(self.pattern)
            if p.dtype != np.uint8 or p.ndim != 3 or p.shape[-1] != 3:
                raise ValueError(f"pattern must be uint8 (H, W, 3), got {p.dtype} {p.shape}")

    def pattern_for(self, height: int, width: int) -> np.ndarray:
        if self.pattern is not None:
            if self.pattern.shape[:2] != (height, width):
                raise ValueError(f"pattern is {self.pattern.shape[:2]}, images are {(height, width)}")
            return np.asarray(self.pattern)
        return np.random.default_rng(self.seed).integers(0, 256, (height, width, 3)).astype(np.uint8)

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = _check_uint8(images)
        pattern = self.pattern_for(*images.shape[1:3]).astype(np.float32)
        out = (1.0 - self.alpha) * images.astype(np.float32) + self.alpha * pattern
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SIGTrigger:
    """Add ``delta * sin(2 pi j frequency / W)`` (pixel units, same on every row and channel)."""

    delta: float = 20.0
    frequency: float = 6.0

    def __post_init__(self) -> None:
        if self.delta <= 0 or self.frequency <= 0:
            raise ValueError(f"delta and frequency must be positive, got {self.delta}, {self.frequency}")

    def signal(self, height: int, width: int) -> np.ndarray:
        """The float ``(H, W, 1)`` additive signal."""
        j = np.arange(width, dtype=np.float64)
        row = self.delta * np.sin(2.0 * np.pi * j * self.frequency / width)
        return np.broadcast_to(row[None, :, None], (height, width, 1))

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = _check_uint8(images)
        out = images.astype(np.float64) + self.signal(*images.shape[1:3])
        return np.clip(np.round(out), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class BackdoorPoison:
    """A poisoned training set and which samples carry the trigger."""

    data: LabelledImages
    poison_indices: np.ndarray
    target: int
    clean_label: bool

    @property
    def poison_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.data), dtype=bool)
        mask[self.poison_indices] = True
        return mask


def poison_dataset(
    data: LabelledImages,
    trigger: Trigger,
    *,
    target: int = 0,
    ratio: float = 0.1,
    clean_label: bool = False,
    seed: int = 0,
) -> BackdoorPoison:
    """Plant ``trigger`` in ``round(ratio * N)`` training samples.

    Dirty-label (default, all-to-one): the samples are drawn from the non-target classes and
    relabelled ``target``. Clean-label (``clean_label=True``, e.g. SIG): they are drawn from the
    target class and keep their label.

    Raises:
        ValueError: ``ratio`` outside (0, 1], ``target`` not a class, or too few candidates.
    """
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if not 0 <= target < data.num_classes:
        raise ValueError(f"target must be in [0, {data.num_classes}), got {target}")
    count = int(round(ratio * len(data)))
    candidates = np.flatnonzero(data.labels == target) if clean_label else np.flatnonzero(data.labels != target)
    if count < 1 or count > len(candidates):
        kind = "target-class" if clean_label else "non-target"
        raise ValueError(f"ratio {ratio} asks for {count} poisons but there are {len(candidates)} {kind} samples")
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, count, replace=False))
    images = data.images.copy()
    labels = data.labels.copy()
    images[chosen] = trigger.apply(images[chosen])
    if not clean_label:
        labels[chosen] = target
    return BackdoorPoison(LabelledImages(images, labels, data.num_classes), chosen, int(target), clean_label)


def triggered_test_set(test: LabelledImages, trigger: Trigger, target: int) -> LabelledImages:
    """The non-target test images with the trigger, labelled ``target`` (accuracy on it = ASR)."""
    keep = np.flatnonzero(test.labels != target)
    if len(keep) == 0:
        raise ValueError("the test set has no non-target images to trigger")
    return LabelledImages(trigger.apply(test.images[keep]), np.full(len(keep), target, np.int64), test.num_classes)


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 500,
            device: Union[str, torch.device, None] = None) -> np.ndarray:
    """Predicted classes of uint8 NHWC ``images`` (inputs scaled to [0, 1], the victims' convention)."""
    images = _check_uint8(images)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    preds = []
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(images[start:start + batch_size]).permute(0, 3, 1, 2).float().div(255.0)
            preds.append(model(x.to(device)).argmax(1).cpu())
    return torch.cat(preds).numpy() if preds else np.zeros(0, np.int64)


def attack_success_rate(model: nn.Module, test: LabelledImages, trigger: Trigger, target: int) -> float:
    """Fraction of triggered non-target test images that ``model`` classifies as ``target``."""
    triggered = triggered_test_set(test, trigger, target)
    return float((predict(model, triggered.images) == target).mean())

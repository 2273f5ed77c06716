"""What the targeted clean-label attacks share: the poisoned set they return, the choice of base
images, the uint8 <-> float image conversions and the success check on a trained model."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages
from ..nn_utils import eval_mode


def to_float_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """float NCHW in [0, 1] -> uint8 NHWC (clamped, rounded)."""
    return x.clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_target(target: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """``target`` as a uint8 image of the bases' shape (ValueError otherwise)."""
    target = np.asarray(target)
    if target.shape != bases.shape[1:] or target.dtype != np.uint8:
        raise ValueError(f"target must be uint8 {bases.shape[1:]}, got {target.dtype} {target.shape}")
    return target


@dataclass(frozen=True)
class TargetedPoison:
    """A training set with targeted poisons, and the target they aim at."""

    data: LabelledImages
    poison_indices: np.ndarray
    target_image: np.ndarray
    target_label: int
    adversarial_label: int

    @property
    def poison_mask(self) -> np.ndarray:
        mask = np.zeros(len(self.data), dtype=bool)
        mask[self.poison_indices] = True
        return mask


def choose_bases(data: LabelledImages, adversarial_label: int, num_poisons: int, seed: int) -> np.ndarray:
    """Sorted indices of ``num_poisons`` random ``adversarial_label`` images (the poisons' bases)."""
    candidates = np.flatnonzero(data.labels == adversarial_label)
    if not 1 <= num_poisons <= len(candidates):
        raise ValueError(f"num_poisons must be in [1, {len(candidates)}] (images of class {adversarial_label}), "
                         f"got {num_poisons}")
    return np.sort(np.random.default_rng(seed).choice(candidates, num_poisons, replace=False))


@torch.no_grad()
def targeted_success(model: nn.Module, poison: TargetedPoison) -> bool:
    """True when ``model`` classifies the target image as the adversarial label."""
    device = next(model.parameters()).device
    with eval_mode(model):
        pred = int(model(to_float_nchw(poison.target_image[None]).to(device)).argmax(1))
    return pred == poison.adversarial_label

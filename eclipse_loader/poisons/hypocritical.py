"""Hypocritical perturbations (Tao et al., NeurIPS 2021, "Better Safe Than Sorry"; attack P2).

The error-minimising twin of TAP: PGD that *lowers* the true-label loss of a crafting model,
``min_delta CE(f(T(x + delta)), y)`` in an L∞ ball, so every training image carries an easy,
non-robust "already solved" feature. The crafting model is only *slightly* trained on clean data
(10 epochs in the authors' follow-up code, TLMichael/Hypocritical-Perturbation,
``--craft_model_epoch 10``); `hypocritical_crafting_model` trains one. Defaults from that code:
L∞ 8/255, 100 PGD steps of ``epsilon / 10``, batch 256, random shift + flip at every step.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from ..data.images import LabelledImages
from .crafted import Log, Transform, perturb_against
from .rem import random_crop_flip


def hypocritical_crafting_model(
    train: LabelledImages,
    model_factory: Callable[[int], nn.Module],
    *,
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Log = None,
) -> nn.Module:
    """A ``model_factory`` network trained for only ``epochs`` epochs on clean ``train`` (SGD at a
    constant ``lr``, flip + crop, no compensation): the "slightly trained" crafting model. Eval mode."""
    from ..evaluation.victim import TrainSettings, train_classifier
    from ..loading.config import AugmentConfig

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    training = TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr, schedule="constant")
    return train_classifier(train, AugmentConfig(compensate=False), training=training, seed=seed,
                            model_factory=model_factory, device=device, log=log)


def hypocritical(
    train: LabelledImages,
    crafting_model: nn.Module,
    *,
    epsilon: float = 8 / 255,
    step_size: Optional[float] = None,
    steps: int = 100,
    batch_size: int = 256,
    transform: Optional[Transform] = None,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Log = None,
) -> LabelledImages:
    """Hypocritical perturbations: ``steps`` of loss-*minimising* PGD on the true labels against
    ``crafting_model`` (e.g. from `hypocritical_crafting_model`), seen through ``transform``
    (default `random_crop_flip`, fresh draws per step). ``step_size`` defaults to
    ``max(2.5 * epsilon / steps, epsilon / 10)`` (TAP's rule; ``epsilon / 10`` at 100 steps).
    Starts from zero noise; deterministic given ``seed``. Labels are unchanged.
    """
    labels = torch.from_numpy(train.labels).long()
    return perturb_against(train, crafting_model, labels, epsilon=epsilon, step_size=step_size, steps=steps,
                           batch_size=batch_size, transform=transform or random_crop_flip, seed=seed, device=device,
                           log=log, name="hypocritical")

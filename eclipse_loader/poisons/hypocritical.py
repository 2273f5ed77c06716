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
from .crafted import Log, Transform, _as_float, _as_poisoned, _check_eps, _pgd
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
    from ..evaluation.victim import TrainRecipe, train_classifier
    from ..loading.config import AugmentConfig

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    recipe = TrainRecipe(epochs=epochs, batch_size=batch_size, lr=lr, schedule="constant")
    return train_classifier(train, AugmentConfig(compensate=False), recipe=recipe, seed=seed,
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
    if step_size is None:
        step_size = max(2.5 * epsilon / max(steps, 1), epsilon / 10)
    _check_eps(epsilon, step_size, steps)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    torch.manual_seed(seed)
    was_training = crafting_model.training
    model = crafting_model.to(device).eval().requires_grad_(False)
    view = transform or random_crop_flip
    clean, labels = _as_float(train)
    parts = []
    for images, targets in zip(clean.split(batch_size), labels.split(batch_size)):
        images = images.to(device)
        parts.append(_pgd(model, images, torch.zeros_like(images), targets.to(device), epsilon=epsilon,
                          step_size=step_size, steps=steps, sign=-1.0, transform=view).cpu())
        if log is not None and len(parts) % 10 == 1:
            log(f"  hypocritical: {min(len(parts) * batch_size, len(train))}/{len(train)} images")
    model.requires_grad_(True).train(was_training)
    delta = torch.cat(parts)
    return _as_poisoned(train, clean, delta)

"""Poison Frogs feature collision (Shafahi et al., NeurIPS 2018), small enough for a CPU.

Base-class images are optimised so that their features collide with one *target* test image's,
while staying close to the base image in pixel space; they keep their (correct, base-class) label.
A model trained on them then tends to classify the target as the base class. As in the paper, a
watermark of the target (``opacity``, default 0.3) is blended into each base first, and an optional
l-inf budget ``epsilon`` around the base (``None``: only the proximity penalty, as in Poison Frogs)
is enforced by projection.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages, validate_images
from ..nn_utils import eval_mode
from .targeted_common import TargetedPoison, check_target, choose_bases, to_float_nchw, to_uint8_nhwc


def feature_collision(
    feature_extractor: nn.Module,
    target: np.ndarray,
    bases: np.ndarray,
    *,
    steps: int = 300,
    lr: float = 0.01,
    beta: float = 0.1,
    opacity: float = 0.3,
    epsilon: Optional[float] = None,
) -> np.ndarray:
    """Craft feature-collision poisons from ``bases`` (uint8 NHWC) against ``target`` (uint8 HWC).

    Minimises ``||f(x) - f(t)||^2 / ||f(t)||^2 + beta * mean((x - b_w)^2) / 0.01`` with Adam, where
    ``b_w = (1 - opacity) b + opacity t`` is the watermarked base, then clips to [0, 1] and (if
    given) to ``||x - b||_inf <= epsilon``. ``feature_extractor`` takes float NCHW in [0, 1].

    Returns uint8 NHWC poisons, one per base.
    """
    validate_images(np.asarray(bases))
    target = check_target(target, bases)
    if steps < 1 or lr <= 0 or beta < 0 or not 0.0 <= opacity < 1.0:
        raise ValueError(f"need steps >= 1, lr > 0, beta >= 0, opacity in [0, 1): {steps}, {lr}, {beta}, {opacity}")
    if epsilon is not None and not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must be in (0, 1] or None, got {epsilon}")
    with eval_mode(feature_extractor):
        return _collide(feature_extractor, target, bases, steps, lr, beta, opacity, epsilon)


def _collide(feature_extractor: nn.Module, target: np.ndarray, bases: np.ndarray, steps: int, lr: float, beta: float,
             opacity: float, epsilon: Optional[float]) -> np.ndarray:
    device = next(feature_extractor.parameters()).device
    base = to_float_nchw(bases).to(device)
    t = to_float_nchw(target[None]).to(device)
    with torch.no_grad():
        t_feat = feature_extractor(t).flatten(1)
    anchor = (1.0 - opacity) * base + opacity * t
    x = anchor.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    scale = float(t_feat.pow(2).sum().clamp_min(1e-12))
    for _ in range(steps):
        feat = feature_extractor(x).flatten(1)
        loss = (feat - t_feat).pow(2).sum(1) / scale + beta * (x - anchor).pow(2).mean((1, 2, 3)) / 0.01
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        with torch.no_grad():
            if epsilon is not None:
                x.copy_(torch.min(torch.max(x, base - epsilon), base + epsilon))
            x.clamp_(0.0, 1.0)
    return to_uint8_nhwc(x.detach().cpu())


def plant_feature_collision(
    data: LabelledImages,
    feature_extractor: nn.Module,
    target_image: np.ndarray,
    target_label: int,
    adversarial_label: int,
    *,
    num_poisons: int = 25,
    seed: int = 0,
    **craft_kwargs: float,
) -> TargetedPoison:
    """Replace ``num_poisons`` random ``adversarial_label`` images of ``data`` by feature-collision poisons.

    ``craft_kwargs`` go to `feature_collision`. Labels are unchanged (clean-label attack).
    """
    if target_label == adversarial_label:
        raise ValueError(f"adversarial_label must differ from target_label ({target_label})")
    chosen = choose_bases(data, adversarial_label, num_poisons, seed)
    images = data.images.copy()
    images[chosen] = feature_collision(feature_extractor, target_image, data.images[chosen], **craft_kwargs)
    return TargetedPoison(LabelledImages(images, data.labels.copy(), data.num_classes), chosen,
                          np.asarray(target_image).copy(), int(target_label), int(adversarial_label))

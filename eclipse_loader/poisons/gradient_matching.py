"""Witches' Brew gradient matching (Geiping et al., ICLR 2021), small enough for a CPU.

Small l-inf perturbations of base-class images are optimised so that the gradient of the poisons'
ordinary training loss (their true labels) points the same way as the gradient of the *target's*
loss under the adversarial label, both taken w.r.t. the trainable parameters. Training on the
poisons then also descends the target's adversarial loss. `gradient_alignment` measures that cosine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages, validate_images
from ..nn_utils import eval_mode
from .targeted_common import TargetedPoison, check_target, choose_bases, to_float_nchw, to_uint8_nhwc


def _check_params(model: nn.Module, params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    params = list(params)
    if not params:
        raise ValueError("params must name at least one trainable parameter of the model, got none")
    own = {id(p) for p in model.parameters()}
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor) or id(p) not in own:
            raise ValueError(f"params[{i}] is not a parameter of the model")
        if not p.requires_grad:
            raise ValueError(f"params[{i}] (shape {tuple(p.shape)}) does not require grad")
    return params


def _check_labels(labels: np.ndarray, count: int, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise ValueError(f"{name} must be {count} integer labels (one per base), got {labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _param_grads(model: nn.Module, params: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 create_graph: bool) -> tuple[torch.Tensor, ...]:
    loss = nn.functional.cross_entropy(model(x), y)
    return torch.autograd.grad(loss, params, create_graph=create_graph)


def _cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((u * v).sum() for u, v in zip(a, b))
    norm_a = torch.sqrt(sum(u.pow(2).sum() for u in a))
    norm_b = torch.sqrt(sum(v.pow(2).sum() for v in b))
    return dot / (norm_a * norm_b).clamp_min(1e-12)


def _check_num_classes(model: nn.Module, x: torch.Tensor, labels: np.ndarray, adversarial_label: int) -> None:
    with torch.no_grad():
        num_classes = model(x[:1]).shape[1]
    if not 0 <= adversarial_label < num_classes:
        raise ValueError(f"adversarial_label must be in [0, {num_classes}), got {adversarial_label}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"base_labels must be in [0, {num_classes}), got range [{labels.min()}, {labels.max()}]")


def gradient_alignment(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    target: np.ndarray,
    adversarial_label: int,
    poisons: np.ndarray,
    poison_labels: np.ndarray,
) -> float:
    """Cosine between the gradients (w.r.t. ``params``) of the poisons' mean CE under ``poison_labels``
    and of the target's CE under ``adversarial_label``; the quantity Witches' Brew maximises.

    ``model`` takes float NCHW in [0, 1]; it is evaluated in eval mode (modes restored afterwards).
    """
    validate_images(np.asarray(poisons))
    target = check_target(target, poisons)
    labels = _check_labels(poison_labels, len(poisons), "poison_labels")
    params = _check_params(model, params)
    device = params[0].device
    with eval_mode(model):
        x = to_float_nchw(poisons).to(device)
        _check_num_classes(model, x, labels, int(adversarial_label))
        t_grad = _param_grads(model, params, to_float_nchw(target[None]).to(device),
                              torch.tensor([int(adversarial_label)], device=device), False)
        p_grad = _param_grads(model, params, x, torch.from_numpy(labels).to(device), False)
        return float(_cosine(p_grad, t_grad))


def gradient_matching(
    model: nn.Module,
    params: Sequence[torch.Tensor],
    target: np.ndarray,
    adversarial_label: int,
    bases: np.ndarray,
    base_labels: np.ndarray,
    *,
    epsilon: float = 16 / 255,
    steps: int = 240,
    restarts: int = 8,
    lr: float = 0.025,
    seed: int = 0,
) -> np.ndarray:
    """Craft Witches' Brew poisons from ``bases`` (uint8 NHWC, true labels ``base_labels``) against ``target``.

    Maximises ``cos(grad_params CE(model(b + delta), y_b), grad_params CE(model(t), y_adv))`` over
    ``||delta||_inf <= epsilon`` and ``b + delta`` in [0, 1] (loss ``1 - cos``, as in the paper). The
    poison gradient is that of the mean loss over all bases together. ``params`` are the parameters the
    victim trains (transfer learning: the new head's weight and bias; from-scratch training: all of
    them); ``model`` takes float NCHW in [0, 1] and is used in eval mode, with its parameters fixed
    at their clean-trained values, as in the paper.

    Optimiser as in the paper: signed Adam, i.e. Adam fed the sign of the gradient w.r.t. ``delta``,
    with projection onto the constraints after every step, ``steps`` iterations (paper: 240) and
    ``restarts`` random restarts (paper: 8), keeping the restart with the highest alignment of the
    rounded uint8 poisons. ``lr`` is Adam's step size in [0, 1] pixel units: the paper's 0.1 is in
    CIFAR-normalised units (std ~ 0.25), so 0.025 here. The step size decays by 10x at 3/8, 5/8
    and 7/8 of the steps (the authors' released schedule). Each restart starts from uniform noise
    in the eps-ball (the released code draws Gaussian noise clipped to it).

    Omitted: the paper's differentiable data augmentation during crafting (flips and crops of the
    poisons, for robustness to a victim that augments) and model ensembles; both only matter when
    the victim augments or its architecture is unknown.

    Returns uint8 NHWC poisons, one per base; ``max |poison - base| <= epsilon + 0.5/255``
    (rounding to uint8).
    """
    validate_images(np.asarray(bases))
    target = check_target(target, bases)
    labels = _check_labels(base_labels, len(bases), "base_labels")
    params = _check_params(model, params)
    if not 0.0 < epsilon <= 1.0:
        raise ValueError(f"epsilon must be in (0, 1], got {epsilon}")
    if steps < 1 or restarts < 1 or not lr > 0:
        raise ValueError(f"need steps >= 1, restarts >= 1, lr > 0: got {steps}, {restarts}, {lr}")
    with eval_mode(model):
        return _brew(model, params, target, int(adversarial_label), bases, labels, epsilon, steps, restarts, lr, seed)


def _brew(model: nn.Module, params: list[torch.Tensor], target: np.ndarray, adversarial_label: int,
          bases: np.ndarray, labels: np.ndarray, epsilon: float, steps: int, restarts: int, lr: float,
          seed: int) -> np.ndarray:
    device = params[0].device
    base = to_float_nchw(bases).to(device)
    y = torch.from_numpy(labels).to(device)
    _check_num_classes(model, base, labels, adversarial_label)
    t_grad = [g.detach() for g in _param_grads(model, params, to_float_nchw(target[None]).to(device),
                                                   torch.tensor([adversarial_label], device=device), False)]
    low, high = (-base).clamp_min(-epsilon), (1.0 - base).clamp_max(epsilon)   # feasible delta box
    milestones = sorted({int(steps // f) for f in (2.667, 1.6, 1.142)})
    generator = torch.Generator().manual_seed(seed)
    best, best_cos = None, -math.inf
    for _ in range(restarts):
        init = (torch.rand(base.shape, generator=generator) * 2.0 - 1.0).mul(epsilon).to(device)
        delta = torch.max(torch.min(init, high), low).requires_grad_(True)
        opt = torch.optim.Adam([delta], lr=lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=0.1)
        for _ in range(steps):
            p_grad = _param_grads(model, params, base + delta, y, True)
            loss = 1.0 - _cosine(p_grad, t_grad)
            (g,) = torch.autograd.grad(loss, delta)
            delta.grad = g.sign()
            opt.step()
            sched.step()
            with torch.no_grad():
                delta.copy_(torch.max(torch.min(delta, high), low))
        with torch.no_grad():
            poisons = (base + delta.detach()).mul(255.0).round().div(255.0)
        cos = float(_cosine(_param_grads(model, params, poisons, y, False), t_grad))
        if cos > best_cos:
            best, best_cos = poisons, cos
    return to_uint8_nhwc(best.cpu())


@dataclass(frozen=True)
class GradientMatchingPoison(TargetedPoison):
    """A `TargetedPoison` with the gradient alignment (cosine) of the bases before and of the poisons after crafting."""

    alignment_before: float
    alignment_after: float


def plant_gradient_matching(
    data: LabelledImages,
    model: nn.Module,
    params: Sequence[torch.Tensor],
    target_image: np.ndarray,
    target_label: int,
    adversarial_label: int,
    *,
    num_poisons: int = 25,
    seed: int = 0,
    **craft_kwargs: float,
) -> GradientMatchingPoison:
    """Replace ``num_poisons`` random ``adversarial_label`` images of ``data`` by Witches' Brew poisons.

    ``model``/``params`` are the attacker's crafting model and the parameters the victim trains (see
    `gradient_matching`, which receives ``craft_kwargs``; ``seed`` picks the bases and seeds the
    restarts). Labels are unchanged (clean-label attack).
    """
    if not 0 <= target_label < data.num_classes or not 0 <= adversarial_label < data.num_classes:
        raise ValueError(f"target_label and adversarial_label must be in [0, {data.num_classes}), "
                         f"got {target_label} and {adversarial_label}")
    if target_label == adversarial_label:
        raise ValueError(f"adversarial_label must differ from target_label ({target_label})")
    chosen = choose_bases(data, adversarial_label, num_poisons, seed)
    bases, labels = data.images[chosen], data.labels[chosen]
    craft_kwargs.setdefault("seed", seed)
    poisons = gradient_matching(model, params, target_image, adversarial_label, bases, labels, **craft_kwargs)
    before = gradient_alignment(model, params, target_image, adversarial_label, bases, labels)
    after = gradient_alignment(model, params, target_image, adversarial_label, poisons, labels)
    images = data.images.copy()
    images[chosen] = poisons
    return GradientMatchingPoison(LabelledImages(images, data.labels.copy(), data.num_classes), chosen,
                                  np.asarray(target_image).copy(), int(target_label), int(adversarial_label),
                                  before, after)

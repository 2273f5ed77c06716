"""Model-based availability poisons: perturbations optimised against a crafting network.

* `error_minimizing` — EM (Huang et al., ICLR 2021, "Unlearnable Examples"): sample-wise noise that
  *minimises* the training loss (min-min bi-level problem), so the network has nothing left to learn.
  Published CIFAR-10 settings: L∞ 8/255, 20 PGD steps of 0.8/255 per round, 10 model-training steps
  between rounds, stop when the crafting model reaches 99% accuracy on the poisoned data.
* `targeted_adversarial` — TAP (Fowl et al., NeurIPS 2021, "Adversarial Examples Make Strong
  Poisons"): targeted PGD against a model trained on clean data, pushing each image towards class
  ``(y + 1) mod K``; L∞ 8/255 (the paper runs 250 steps; fewer here are a parameter).
* The adaptive attacker who knows the defence: `error_minimizing(..., transform=...)` optimises the
  noise *through* the defence, as expectation over its randomness (EOT): `compensation_eot` (random
  grayscale p=0.4 and Gaussian noise 0.05 redrawn at every step) and, harder, `denoiser_eot` (the
  purifier's forward noise and one-call denoising, differentiable, then the compensation).

All budgets are in [0, 1] pixel units; outputs are rounded to uint8, so |change| <= round(255 eps).
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from ..data.images import LabelledImages

Transform = Callable[[torch.Tensor], torch.Tensor]
"""A differentiable map of float NCHW batches in [0, 1] (what the network sees instead of the input)."""
Log = Optional[Callable[[str], None]]


def _as_float(data: LabelledImages) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(data.images).permute(0, 3, 1, 2).float().div(255.0)
    return images, torch.from_numpy(data.labels.astype(np.int64))


def _as_poisoned(data: LabelledImages, clean: torch.Tensor, delta: torch.Tensor) -> LabelledImages:
    pixels = (clean + delta).clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return LabelledImages(np.ascontiguousarray(pixels), data.labels.copy(), data.num_classes)


def _check_eps(epsilon: float, step_size: float, steps: int) -> None:
    if not 0 < epsilon <= 1 or not 0 < step_size <= 1:
        raise ValueError(f"epsilon and step_size must be in (0, 1], got {epsilon} and {step_size}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Flip each image horizontally with probability 0.5 (differentiable; crafting-time augmentation)."""
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, x.flip(-1), x)


def luma_float(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of a float NCHW batch, in all three channels (differentiable)."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def compensation_eot(p_gray: float = 0.4, sigma: float = 0.05, then: Optional[Transform] = None) -> Transform:
    """The corruption compensation as a differentiable random transform (fresh draws per call):
    grayscale (ITU-R 601 luma) with probability ``p_gray``, then N(0, sigma^2) noise, clamp to [0, 1].
    ``then`` runs first (e.g. `denoiser_eot`), as the defence applies compensation after purification.
    """

    def transform(x: torch.Tensor) -> torch.Tensor:
        if then is not None:
            x = then(x)
        luma = luma_float(x)
        gray = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p_gray
        x = torch.where(gray, luma, x)
        return (x + sigma * torch.randn_like(x)).clamp(0, 1)

    return transform


def denoiser_eot(unet: nn.Module, alphas_cumprod: torch.Tensor, t_star: int) -> Transform:
    """The purifier as a differentiable random transform: noise to ``t_star`` in one shot (fresh
    noise per call), predict x0 with one U-Net call, clip. The attacker's view of the one-call purifier.
    """
    if not 1 <= t_star <= len(alphas_cumprod):
        raise ValueError(f"t_star must be in [1, {len(alphas_cumprod)}], got {t_star}")
    abar = float(alphas_cumprod[t_star - 1])
    unet.eval().requires_grad_(False)

    def transform(x: torch.Tensor) -> torch.Tensor:
        x_model = 2.0 * x - 1.0
        x_t = abar**0.5 * x_model + (1.0 - abar) ** 0.5 * torch.randn_like(x_model)
        t = torch.full((x.shape[0],), t_star - 1, device=x.device, dtype=torch.long)
        eps = unet(x_t, t).sample
        x0 = ((x_t - (1.0 - abar) ** 0.5 * eps) / abar**0.5).clamp(-1, 1)
        return (x0 + 1.0) / 2.0

    return transform


def _pgd(model: nn.Module, clean: torch.Tensor, delta: torch.Tensor, labels: torch.Tensor, *, epsilon: float,
         step_size: float, steps: int, sign: float, transform: Transform) -> torch.Tensor:
    """``steps`` signed-gradient steps on ``delta`` (sign -1: descend the loss, +1: ascend), kept in the
    L∞ ball and the valid pixel range."""
    delta = delta.clone()
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = nn.functional.cross_entropy(model(transform((clean + delta).clamp(0, 1))), labels)
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta = (delta + sign * step_size * grad.sign()).clamp(-epsilon, epsilon)
            delta = (clean + delta).clamp(0, 1) - clean
    return delta.detach()


def error_minimizing(
    data: LabelledImages,
    model_factory: Callable[[int], nn.Module],
    *,
    epsilon: float = 8 / 255,
    step_size: float = 0.8 / 255,
    pgd_steps: int = 20,
    train_steps: int = 10,
    stop_accuracy: float = 0.99,
    max_rounds: int = 20,
    batch_size: int = 128,
    lr: float = 0.1,
    transform: Optional[Transform] = None,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Log = None,
) -> LabelledImages:
    """Sample-wise error-minimizing noise (EM). Each round trains the crafting model for
    ``train_steps`` batches on the current poisoned data, then runs ``pgd_steps`` of loss-minimising
    PGD on every sample's noise; it stops when the model's accuracy on the poisoned data (seen
    through ``transform``) reaches ``stop_accuracy`` or after ``max_rounds``. With ``transform`` =
    `compensation_eot()` (or ``compensation_eot(then=denoiser_eot(...))``) this is the adaptive attack.
    """
    _check_eps(epsilon, step_size, pgd_steps)
    device = torch.device(device)
    view = transform or random_flip
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clean, labels = _as_float(data)
    delta = (torch.rand(clean.shape, generator=generator) * 2 - 1) * epsilon
    delta = (clean + delta).clamp(0, 1) - clean
    model = model_factory(data.num_classes).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = len(data)
    cursor, order = 0, torch.randperm(n, generator=generator)
    for round_ in range(max_rounds):
        model.train()
        for _ in range(train_steps):
            if cursor + batch_size > n:
                cursor, order = 0, torch.randperm(n, generator=generator)
            idx = order[cursor:cursor + batch_size]
            cursor += batch_size
            x = view((clean[idx] + delta[idx]).clamp(0, 1).to(device))
            loss = nn.functional.cross_entropy(model(x), labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        correct = 0
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            c, y = clean[sl].to(device), labels[sl].to(device)
            d = _pgd(model, c, delta[sl].to(device), y, epsilon=epsilon, step_size=step_size, steps=pgd_steps,
                     sign=-1.0, transform=view)
            delta[sl] = d.cpu()
            with torch.no_grad():
                correct += int((model(view((c + d).clamp(0, 1))).argmax(1) == y).sum())
        accuracy = correct / n
        if log is not None:
            log(f"  EM round {round_ + 1}/{max_rounds}: crafting-model accuracy on poisoned data {accuracy:.3f}")
        if accuracy >= stop_accuracy:
            break
    return _as_poisoned(data, clean, delta)


def targeted_adversarial(
    data: LabelledImages,
    model: nn.Module,
    *,
    epsilon: float = 8 / 255,
    step_size: Optional[float] = None,
    steps: int = 250,
    target_shift: int = 1,
    batch_size: int = 256,
    transform: Optional[Transform] = None,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Log = None,
) -> LabelledImages:
    """Targeted adversarial poisoning (TAP): PGD towards class ``(y + target_shift) mod K`` against
    ``model``, a network trained on clean data. ``step_size`` defaults to ``2.5 * epsilon / steps``
    (at least epsilon / 10). Random flips are applied at each step (a cheap form of the paper's
    differentiable augmentation), unless another ``transform`` is given.
    """
    if target_shift % data.num_classes == 0:
        raise ValueError(f"target_shift={target_shift} maps every class to itself")
    targets = (torch.from_numpy(data.labels).long() + target_shift) % data.num_classes
    return perturb_against(data, model, targets, epsilon=epsilon, step_size=step_size, steps=steps,
                           batch_size=batch_size, transform=transform or random_flip, seed=seed, device=device,
                           log=log, name="TAP")


def perturb_against(data: LabelledImages, model: nn.Module, targets: torch.Tensor, *, epsilon: float,
                    step_size: Optional[float], steps: int, batch_size: int, transform: Transform, seed: int,
                    device: Union[str, torch.device], log: Log, name: str) -> LabelledImages:
    """``steps`` of loss-lowering PGD from zero noise towards ``targets`` against a fixed ``model`` seen through
    ``transform`` (TAP: shifted labels; Hypocritical: the true labels). ``step_size`` None: ``max(2.5 * epsilon /
    steps, epsilon / 10)``. The model's mode and gradients are restored afterwards."""
    step_size = step_size if step_size is not None else max(2.5 * epsilon / max(steps, 1), epsilon / 10)
    _check_eps(epsilon, step_size, steps)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    torch.manual_seed(seed)
    was_training = model.training
    model = model.to(device).eval().requires_grad_(False)
    clean, _ = _as_float(data)
    delta = torch.zeros_like(clean)
    for start in range(0, len(data), batch_size):
        sl = slice(start, start + batch_size)
        delta[sl] = _pgd(model, clean[sl].to(device), delta[sl].to(device), targets[sl].to(device), epsilon=epsilon,
                         step_size=step_size, steps=steps, sign=-1.0, transform=transform).cpu()
        if log is not None and (start // batch_size) % 10 == 0:
            log(f"  {name}: {min(start + batch_size, len(data))}/{len(data)} images")
    model.requires_grad_(True).train(was_training)
    return _as_poisoned(data, clean, delta)

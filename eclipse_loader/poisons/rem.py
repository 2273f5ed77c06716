"""REM — robust error-minimizing noise (Fu et al., ICLR 2022, "Robust Unlearnable Examples").

EM's min-min problem made robust to adversarial training: the noise ``delta`` (L∞ ``epsilon``)
minimises the loss the crafting model has under its *worst* perturbation ``rho`` (L∞
``adv_epsilon``), averaged over the training augmentation (random crop + flip)::

    min_delta  E_T  max_rho  CE(f(T(x + delta) + rho), y)

and the crafting model is itself trained adversarially (with ``rho``) on the poisoned data. The
inner max is PGD; its gradient towards ``delta`` uses Danskin's theorem (``rho`` held fixed), as
the authors' code does. Defaults are the authors' CIFAR-10 script (``scripts/cifar10/gen_rem.sh``):
``epsilon`` 8/255 with 10 steps of 1.6/255, ``adv_epsilon`` 4/255 with 10 steps of 0.8/255, 5
augmentation draws per step, SGD lr 0.1, batch 128.
"""
from __future__ import annotations

from typing import Callable, Iterator, Optional, Union

import torch
from torch import nn

from ..data.images import LabelledImages
from .crafted import Log, Transform, _as_float, _as_poisoned, _pgd


def random_crop_flip(x: torch.Tensor, padding: int = 4) -> torch.Tensor:
    """Shift each image by up to ``padding`` pixels (zero fill, as RandomCrop(padding)) and flip it
    with probability 0.5; differentiable (an index gather), fresh draws per call."""
    n, _, h, w = x.shape
    padded = nn.functional.pad(x, (padding, padding, padding, padding))
    dy, dx = (torch.randint(0, 2 * padding + 1, (n, 1), device=x.device) for _ in range(2))
    rows = (dy + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx + torch.arange(w, device=x.device))[:, None, None, :]
    batch, chan = torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)
    out = padded[batch, chan[None, :, None, None], rows, cols]
    flip = torch.rand(n, 1, 1, 1, device=x.device) < 0.5
    return torch.where(flip, out.flip(-1), out)


def _worst_case_view(model: nn.Module, labels: torch.Tensor, augment: Transform, *, adv_epsilon: float,
                     adv_step_size: float, adv_steps: int, samples: int) -> Transform:
    """``x -> cat_k [T_k(x) + rho_k]``: ``samples`` augmentation draws, each moved by its own
    loss-maximising PGD perturbation (random start, computed on a detached copy, so gradients reach
    ``x`` through ``T_k`` only). Labels for the output are ``labels.repeat(samples)``."""

    def view(x: torch.Tensor) -> torch.Tensor:
        views = []
        for _ in range(samples):
            seen = augment(x)
            if adv_epsilon == 0:
                views.append(seen)
                continue
            anchor = seen.detach()
            start = (torch.rand_like(anchor) * 2 - 1) * adv_epsilon
            start = (anchor + start).clamp(0, 1) - anchor
            rho = _pgd(model, anchor, start, labels, epsilon=adv_epsilon, step_size=adv_step_size, steps=adv_steps,
                       sign=1.0, transform=lambda v: v)
            views.append(seen + rho)
        return torch.cat(views)

    return view


def _check_args(epsilon: float, step_size: float, adv_epsilon: float, adv_step_size: float,
                counts: dict[str, int]) -> None:
    if not 0 <= adv_epsilon <= 1:
        raise ValueError(f"adv_epsilon must be in [0, 1], got {adv_epsilon}")
    budgets = {"epsilon": epsilon, "step_size": step_size, **({"adv_step_size": adv_step_size} if adv_epsilon else {})}
    for name, value in budgets.items():
        if not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless index batches: a fresh permutation per pass, the short tail dropped."""
    size = min(batch_size, n)
    while True:
        order = torch.randperm(n, generator=generator)
        yield from (order[i:i + size] for i in range(0, n - size + 1, size))


def robust_error_minimizing(
    train: LabelledImages,
    model_factory: Callable[[int], nn.Module],
    *,
    epsilon: float = 8 / 255,
    adv_epsilon: float = 4 / 255,
    step_size: float = 1.6 / 255,
    adv_step_size: Optional[float] = None,
    pgd_steps: int = 10,
    adv_steps: int = 10,
    train_steps: int = 10,
    stop_accuracy: float = 0.99,
    max_rounds: int = 20,
    batch_size: int = 128,
    lr: float = 0.1,
    eot_samples: int = 5,
    transform: Optional[Transform] = None,
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Log = None,
) -> LabelledImages:
    """Robust error-minimizing noise (REM), with `error_minimizing`'s round structure.

    Each round: ``train_steps`` batches of adversarial training of the crafting model on the
    poisoned data (augmented by ``transform``, then its ``adv_steps``-step PGD perturbation within
    ``adv_epsilon``); then ``pgd_steps`` signed-gradient steps of ``step_size`` on every sample's
    noise that lower the expected (``eot_samples`` draws of ``transform``) loss under that attack.
    Stops when the model's accuracy on the poisoned data *under the attack* reaches
    ``stop_accuracy``, or after ``max_rounds``. ``transform`` defaults to `random_crop_flip`;
    ``adv_step_size`` to ``adv_epsilon / 5``; ``adv_epsilon=0`` gives EM with EOT.
    Deterministic given ``seed`` (on a deterministic device). Labels are unchanged.
    """
    adv_step_size = adv_epsilon / 5 if adv_step_size is None else adv_step_size
    _check_args(epsilon, step_size, adv_epsilon, adv_step_size,
                dict(pgd_steps=pgd_steps, adv_steps=adv_steps, train_steps=train_steps, max_rounds=max_rounds,
                     batch_size=batch_size, eot_samples=eot_samples))
    device = torch.device(device)
    augment = transform or random_crop_flip
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clean, labels = _as_float(train)
    delta = (torch.rand(clean.shape, generator=generator) * 2 - 1) * epsilon
    delta = (clean + delta).clamp(0, 1) - clean
    model = model_factory(train.num_classes).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    attack = dict(adv_epsilon=adv_epsilon, adv_step_size=adv_step_size, adv_steps=adv_steps)
    batches = _batches(len(train), batch_size, generator)
    for round_ in range(max_rounds):
        for _ in range(train_steps):
            idx = next(batches)
            y = labels[idx].to(device)
            model.eval()  # the attack sees fixed batch-norm statistics, as in the authors' code
            poisoned = (clean[idx] + delta[idx]).clamp(0, 1).to(device)
            x = _worst_case_view(model, y, augment, samples=1, **attack)(poisoned)
            model.train()
            loss = nn.functional.cross_entropy(model(x.detach()), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = 0
        for start in range(0, len(train), batch_size):
            sl = slice(start, start + batch_size)
            c, y = clean[sl].to(device), labels[sl].to(device)
            view = _worst_case_view(model, y, augment, samples=eot_samples, **attack)
            d = _pgd(model, c, delta[sl].to(device), y.repeat(eot_samples), epsilon=epsilon, step_size=step_size,
                     steps=pgd_steps, sign=-1.0, transform=view)
            delta[sl] = d.cpu()
            x = _worst_case_view(model, y, augment, samples=1, **attack)((c + d).clamp(0, 1))
            with torch.no_grad():
                correct += int((model(x).argmax(1) == y).sum())
        accuracy = correct / len(train)
        if log is not None:
            log(f"  REM round {round_ + 1}/{max_rounds}: crafting-model accuracy on poisoned data under the "
                f"{adv_epsilon * 255:.0f}/255 attack {accuracy:.3f}")
        if accuracy >= stop_accuracy:
            break
    return _as_poisoned(train, clean, delta)

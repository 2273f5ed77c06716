"""REM and Hypocritical perturbations: budget, labels, seeding, and the objective each one optimises."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader import poisons
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.victim import small_cnn
from eclipse_loader.poisons.crafted import _as_float, _pgd
from eclipse_loader.poisons.rem import _worst_case_view

EPS = 8 / 255
TINY_REM = dict(pgd_steps=2, adv_steps=1, eot_samples=2, train_steps=2, max_rounds=1, batch_size=32)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


@pytest.fixture(scope="module")
def data(cifar_small) -> LabelledImages:
    return cifar_small.subset(np.arange(64))


@pytest.fixture(scope="module")
def crafting_model(cifar_small) -> torch.nn.Module:
    """small_cnn after 10 short epochs on 200 clean images (about 1 s on one thread)."""
    return poisons.hypocritical_crafting_model(cifar_small.subset(np.arange(200)), lambda k: small_cnn(k, 8),
                                               epochs=10, batch_size=32, lr=0.05)


def _seeded_factory(built: list) -> object:
    def factory(num_classes: int) -> torch.nn.Module:
        torch.manual_seed(0)
        built.append(small_cnn(num_classes, 8))
        return built[-1]

    return factory


def _loss(model: torch.nn.Module, d: LabelledImages, adv_epsilon: float = 0.0) -> float:
    """Mean cross-entropy, after an 8-step L∞ ``adv_epsilon`` PGD attack when that is positive."""
    model.eval()
    x, y = _as_float(d)
    if adv_epsilon:
        x = x + _pgd(model, x, torch.zeros_like(x), y, epsilon=adv_epsilon, step_size=adv_epsilon / 4, steps=8,
                     sign=1.0, transform=_identity)
    with torch.no_grad():
        return float(torch.nn.functional.cross_entropy(model(x), y))


def _check_budget_and_labels(clean: LabelledImages, poisoned: LabelledImages) -> np.ndarray:
    assert poisoned.images.shape == clean.images.shape and poisoned.images.dtype == np.uint8
    np.testing.assert_array_equal(poisoned.labels, clean.labels)
    change = np.abs(poisoned.images.astype(np.int16) - clean.images)
    assert change.max() <= round(255 * EPS) and (change > 0).mean() > 0.3
    return change


def test_random_crop_flip_is_a_shift_or_a_flipped_shift():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8, requires_grad=True)
    out = poisons.random_crop_flip(x, padding=2)
    padded = torch.nn.functional.pad(x.detach(), (2, 2, 2, 2))
    candidates = [padded[..., i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
    candidates += [c.flip(-1) for c in candidates]
    matches = [sum(torch.equal(out[k].detach(), c[k]) for c in candidates) for k in range(16)]
    assert min(matches) >= 1
    assert sum(torch.equal(out[k].detach(), x[k].detach()) for k in range(16)) < 8  # most images are moved
    out.sum().backward()
    assert x.grad.abs().sum() > 0  # differentiable through the gather


def test_rem_inner_view_raises_the_loss_within_adv_epsilon(crafting_model, data):
    """The inner max: each of the ``samples`` views is the input moved by a loss-ascending rho."""
    x, y = _as_float(data)
    torch.manual_seed(0)
    view = _worst_case_view(crafting_model, y, _identity, adv_epsilon=4 / 255, adv_step_size=1 / 255, adv_steps=4,
                            samples=3)
    seen = view(x)
    assert seen.shape == (3 * len(x), *x.shape[1:])
    assert (seen - x.repeat(3, 1, 1, 1)).abs().max() <= 4 / 255 + 1e-6
    with torch.no_grad():
        worst = float(torch.nn.functional.cross_entropy(crafting_model(seen), y.repeat(3)))
    assert worst > _loss(crafting_model, data) + 0.2


def test_rem_stays_in_budget_keeps_labels_and_follows_the_seed(data):
    runs = [poisons.robust_error_minimizing(data, lambda k: small_cnn(k, 8), seed=s, **TINY_REM) for s in (0, 0, 1)]
    _check_budget_and_labels(data, runs[0])
    np.testing.assert_array_equal(runs[0].images, runs[1].images)
    assert (runs[0].images != runs[2].images).mean() > 0.3


def test_rem_lowers_the_crafted_models_loss_under_attack(data):
    """The outer min: the adversarially trained crafting model fits the poisoned data, even under a
    4/255 attack, clearly better than the clean data."""
    built: list = []
    poisoned = poisons.robust_error_minimizing(data, _seeded_factory(built), pgd_steps=5, adv_steps=2, eot_samples=1,
                                               train_steps=20, max_rounds=2, batch_size=32)
    model = built[0]
    assert _loss(model, poisoned, 4 / 255) < _loss(model, data, 4 / 255) - 0.3


def test_hypocritical_stays_in_budget_keeps_labels_and_follows_the_seed(crafting_model, data):
    runs = [poisons.hypocritical(data, crafting_model, steps=4, seed=s) for s in (0, 0, 1)]
    _check_budget_and_labels(data, runs[0])
    np.testing.assert_array_equal(runs[0].images, runs[1].images)
    assert (runs[0].images != runs[2].images).mean() > 0.1  # only the crop/flip draws differ
    assert not crafting_model.training and all(p.requires_grad for p in crafting_model.parameters())


def test_hypocritical_lowers_the_crafting_models_loss(crafting_model, data):
    poisoned = poisons.hypocritical(data, crafting_model, steps=10)
    assert _loss(crafting_model, poisoned) < _loss(crafting_model, data) - 0.3


@pytest.mark.parametrize("argument, value", [
    ("epsilon", 0.0), ("epsilon", 2.0), ("adv_epsilon", -0.1), ("step_size", 0.0), ("pgd_steps", 0),
    ("adv_steps", 0), ("eot_samples", 0), ("train_steps", 0), ("max_rounds", 0), ("batch_size", 0),
])
def test_rem_refuses_bad_arguments(data, argument, value):
    with pytest.raises(ValueError, match=argument):
        poisons.robust_error_minimizing(data, lambda k: small_cnn(k, 8), **{**TINY_REM, argument: value})


@pytest.mark.parametrize("argument, value", [("epsilon", -1.0), ("steps", 0), ("step_size", 2.0), ("batch_size", 0)])
def test_hypocritical_refuses_bad_arguments(data, argument, value):
    with pytest.raises(ValueError, match=argument):
        poisons.hypocritical(data, small_cnn(10, 8), **{"steps": 2, argument: value})


def test_hypocritical_crafting_model_refuses_zero_epochs(data):
    with pytest.raises(ValueError, match="epochs"):
        poisons.hypocritical_crafting_model(data, small_cnn, epochs=0)

"""Witches' Brew gradient matching: l-inf budget, clean labels, the alignment rises, input validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.victim import quick_cnn
from eclipse_loader.poisons.targeted import (
    TargetedPoison,
    gradient_alignment,
    gradient_matching,
    plant_gradient_matching,
)

EPS = 8 / 255


@pytest.fixture(scope="module")
def transfer(cifar):
    """A narrow `quick_cnn` trained briefly on 400 real images; its body frozen, its last layer the trainable head."""
    torch.manual_seed(0)
    x = torch.from_numpy(cifar["train_x"][:400]).permute(0, 3, 1, 2).float().div(255.0)
    y = torch.from_numpy(cifar["train_y"][:400].astype(np.int64))
    model = quick_cnn(10, width=8)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(8):
        perm = torch.randperm(len(y))
        for s in range(0, len(y), 50):
            i = perm[s:s + 50]
            loss = nn.functional.cross_entropy(model(x[i]), y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    for p in model[:-1].parameters():
        p.requires_grad_(False)
    return model, list(model[-1].parameters())


@pytest.fixture(scope="module")
def data(cifar) -> LabelledImages:
    return LabelledImages(cifar["train_x"][:300].copy(), cifar["train_y"][:300].astype(np.int64), 10)


@pytest.fixture(scope="module")
def target(cifar) -> tuple[np.ndarray, int, int]:
    label = int(cifar["test_y"][0])
    return cifar["test_x"][0], label, (label + 1) % 10


@pytest.fixture(scope="module")
def planted(transfer, data, target) -> TargetedPoison:
    model, params = transfer
    image, label, adv = target
    return plant_gradient_matching(data, model, params, image, label, adv, num_poisons=6, seed=1,
                                   epsilon=EPS, steps=40, restarts=2)


def test_budget_labels_and_untouched_images(planted, data, target):
    _, _, adv = target
    idx = planted.poison_indices
    assert len(idx) == 6 and np.all(data.labels[idx] == adv)
    diff = np.abs(planted.data.images[idx].astype(int) - data.images[idx].astype(int))
    assert diff.max() <= round(EPS * 255) + 1          # eps + uint8 rounding
    assert diff.max() >= round(EPS * 255) - 1          # the budget is actually used
    np.testing.assert_array_equal(planted.data.labels, data.labels)           # clean-label
    others = np.setdiff1d(np.arange(len(data)), idx)
    np.testing.assert_array_equal(planted.data.images[others], data.images[others])
    assert planted.poison_mask.sum() == 6 and planted.adversarial_label == adv


def test_alignment_rises_clearly(planted, transfer, data, target):
    model, params = transfer
    image, _, adv = target
    idx = planted.poison_indices
    before = gradient_alignment(model, params, image, adv, data.images[idx], data.labels[idx])
    after = gradient_alignment(model, params, image, adv, planted.data.images[idx], data.labels[idx])
    assert before == pytest.approx(planted.alignment_before) and after == pytest.approx(planted.alignment_after)
    assert after > before + 0.1 and (1.0 - after) < (1.0 - before) / 4, (before, after)
    # random noise of the same budget does not do this
    rng = np.random.default_rng(0)
    noise = rng.integers(-round(EPS * 255), round(EPS * 255) + 1, size=data.images[idx].shape)
    noisy = np.clip(data.images[idx].astype(int) + noise, 0, 255).astype(np.uint8)
    noisy_alignment = gradient_alignment(model, params, image, adv, noisy, data.labels[idx])
    assert noisy_alignment < before + 0.05, (before, noisy_alignment)


def test_deterministic_given_seed(transfer, data, target):
    model, params = transfer
    image, _, adv = target
    bases, labels = data.images[data.labels == adv][:3], data.labels[data.labels == adv][:3]
    a = gradient_matching(model, params, image, adv, bases, labels, steps=5, restarts=1, seed=3)
    b = gradient_matching(model, params, image, adv, bases, labels, steps=5, restarts=1, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.uint8 and a.shape == bases.shape


def test_restarts_keep_the_best_alignment(transfer, data, target):
    """Restart 1 of 3 is the single-restart run (same generator), so 3 restarts can only do as well or better."""
    model, params = transfer
    image, _, adv = target
    bases, labels = data.images[data.labels == adv][:4], data.labels[data.labels == adv][:4]
    cos = {r: gradient_alignment(model, params, image, adv,
                                 gradient_matching(model, params, image, adv, bases, labels, steps=4, restarts=r,
                                                   seed=5), labels)
           for r in (1, 3)}
    assert cos[3] >= cos[1] - 1e-6, cos


def _bad_calls(model, params, image, adv, bases, labels, data, label):
    other = nn.Linear(2, 2)
    return {
        "epsilon": lambda: gradient_matching(model, params, image, adv, bases, labels, epsilon=0.0),
        "epsilon ": lambda: gradient_matching(model, params, image, adv, bases, labels, epsilon=2.0),
        "steps": lambda: gradient_matching(model, params, image, adv, bases, labels, steps=0),
        "restarts": lambda: gradient_matching(model, params, image, adv, bases, labels, restarts=0),
        "uint8": lambda: gradient_matching(model, params, image, adv, bases.astype(np.float32) / 255, labels),
        "target must be uint8": lambda: gradient_matching(model, params, image[:16], adv, bases, labels),
        "base_labels": lambda: gradient_matching(model, params, image, adv, bases, labels[:-1]),
        "base_labels must be in": lambda: gradient_matching(model, params, image, adv, bases, labels + 10),
        "adversarial_label must be in": lambda: gradient_matching(model, params, image, 10, bases, labels),
        "not a parameter of the model": lambda: gradient_matching(model, [other.weight], image, adv, bases, labels),
        "at least one": lambda: gradient_matching(model, [], image, adv, bases, labels),
        "does not require grad": lambda: gradient_matching(model, [next(model[0].parameters())], image, adv, bases,
                                                           labels),
        "must differ": lambda: plant_gradient_matching(data, model, params, image, adv, adv),
        "num_poisons": lambda: plant_gradient_matching(data, model, params, image, label, adv, num_poisons=1000),
        "target_label and adversarial_label": lambda: plant_gradient_matching(data, model, params, image, label, 12),
    }


@pytest.mark.parametrize("problem", ["epsilon", "epsilon ", "steps", "restarts", "uint8", "target must be uint8",
                                     "base_labels", "base_labels must be in", "adversarial_label must be in",
                                     "not a parameter of the model", "at least one", "does not require grad",
                                     "must differ", "num_poisons", "target_label and adversarial_label"])
def test_bad_inputs_raise_value_error_naming_the_problem(problem, transfer, data, target):
    model, params = transfer
    image, label, adv = target
    bases, labels = data.images[data.labels == adv][:2], data.labels[data.labels == adv][:2]
    with pytest.raises(ValueError, match=problem.strip()):
        _bad_calls(model, params, image, adv, bases, labels, data, label)[problem]()

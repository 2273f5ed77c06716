"""Backdoor triggers (placement, blend ratio, SIG signal), poisoning, ASR; the feature-collision attack."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.data.images import InvalidInputError, LabelledImages
from eclipse_loader.poisons.backdoors import (
    BadNetsTrigger,
    BlendedTrigger,
    SIGTrigger,
    attack_success_rate,
    poison_dataset,
    triggered_test_set,
)
from eclipse_loader.poisons.targeted import feature_collision, plant_feature_collision, targeted_success


def images(n=4, value=100):
    return np.full((n, 32, 32, 3), value, np.uint8)


def test_badnets_patch_sits_in_the_bottom_right_corner_only():
    trigger = BadNetsTrigger(size=4)
    out = trigger.apply(images())
    changed = (out != 100).any(-1).any(0)
    assert changed[28:, 28:].any() and not changed[:28].any() and not changed[:, :28].any()
    np.testing.assert_array_equal(out[:, 28:, 28:], np.broadcast_to(trigger.patch, (4, 4, 4, 3)))
    np.testing.assert_array_equal(BadNetsTrigger(size=3, margin=1).mask(32, 32).nonzero()[0], np.repeat([28, 29, 30], 3))
    with pytest.raises(ValueError, match="does not fit"):
        BadNetsTrigger(size=40).apply(images())


def test_blend_ratio():
    pattern = np.full((32, 32, 3), 200, np.uint8)
    out = BlendedTrigger(alpha=0.25, pattern=pattern).apply(images(value=100))
    assert (out == 125).all()  # 0.75 * 100 + 0.25 * 200
    noise = BlendedTrigger(alpha=0.1, seed=1)
    np.testing.assert_array_equal(noise.apply(images(1)), noise.apply(images(1)))
    with pytest.raises(ValueError, match="alpha"):
        BlendedTrigger(alpha=0.0)


def test_sig_signal_is_a_horizontal_sinusoid():
    out = SIGTrigger(delta=20, frequency=6).apply(images(1)).astype(int) - 100
    expected = np.round(20 * np.sin(2 * np.pi * np.arange(32) * 6 / 32)).astype(int)
    assert (out[0, :, :, 0] == expected[None, :]).all() and (out[0, 5] == out[0, 17]).all()


def test_trigger_refuses_float_images():
    with pytest.raises(InvalidInputError, match="uint8"):
        BadNetsTrigger().apply(np.zeros((1, 32, 32, 3), np.float32))


def make_data(n=100):
    rng = np.random.default_rng(0)
    return LabelledImages(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10, 10)


def test_dirty_and_clean_label_poisoning():
    data = make_data()
    dirty = poison_dataset(data, BadNetsTrigger(), target=0, ratio=0.1, seed=0)
    assert len(dirty.poison_indices) == 10
    assert (data.labels[dirty.poison_indices] != 0).all() and (dirty.data.labels[dirty.poison_indices] == 0).all()
    untouched = ~dirty.poison_mask
    np.testing.assert_array_equal(dirty.data.images[untouched], data.images[untouched])
    clean = poison_dataset(data, SIGTrigger(), target=3, ratio=0.05, clean_label=True)
    assert (data.labels[clean.poison_indices] == 3).all()
    np.testing.assert_array_equal(clean.data.labels, data.labels)
    with pytest.raises(ValueError, match="target-class"):
        poison_dataset(data, SIGTrigger(), target=3, ratio=0.5, clean_label=True)


class PatchDetector(torch.nn.Module):
    """Predicts class 0 when the bottom-right 4x4 corner matches the BadNets patch, else class 1."""

    def __init__(self, patch: np.ndarray):
        super().__init__()
        self.patch = torch.nn.Parameter(torch.from_numpy(patch).permute(2, 0, 1).float() / 255, requires_grad=False)

    def forward(self, x):
        hit = (x[:, :, 28:, 28:] - self.patch).abs().amax((1, 2, 3)) < 1e-3
        return torch.stack([hit.float(), (~hit).float()], 1)


def test_attack_success_rate_counts_non_target_images_only():
    data = make_data()
    trigger = BadNetsTrigger()
    triggered = triggered_test_set(data, trigger, target=0)
    assert len(triggered) == 90 and (triggered.labels == 0).all()
    assert attack_success_rate(PatchDetector(trigger.patch), data, trigger, target=0) == 1.0
    assert attack_success_rate(PatchDetector(BadNetsTrigger(seed=5).patch), data, trigger, target=0) == 0.0


def test_feature_collision_moves_features_to_the_target():
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                                    torch.nn.Flatten())
    data = make_data(40)
    target = data.images[0]
    bases = data.images[1:4]
    poisons = feature_collision(extractor, target, bases, steps=60, lr=0.02, beta=0.01, opacity=0.3)

    def fdist(imgs):
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
        t = torch.from_numpy(target[None]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            return (extractor(x) - extractor(t)).norm(dim=1)

    assert (fdist(poisons) < 0.5 * fdist(bases)).all()
    bounded = feature_collision(extractor, target, bases, steps=10, epsilon=4 / 255)
    assert np.abs(bounded.astype(int) - bases.astype(int)).max() <= 4
    with pytest.raises(ValueError, match="target"):
        feature_collision(extractor, target[:16], bases)


def test_plant_feature_collision_keeps_labels_and_scores_success():
    extractor = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32 * 3, 4))
    data = make_data(60)
    poison = plant_feature_collision(data, extractor, data.images[1], 1, 7, num_poisons=3, steps=2)
    assert (data.labels[poison.poison_indices] == 7).all() and poison.poison_mask.sum() == 3
    np.testing.assert_array_equal(poison.data.labels, data.labels)

    class Const(torch.nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c, self.w = c, torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), self.c), 10).float()

    assert targeted_success(Const(7), poison) and not targeted_success(Const(1), poison)
    with pytest.raises(ValueError, match="differ"):
        plant_feature_collision(data, extractor, data.images[1], 1, 1)


def test_crafting_leaves_a_sliced_extractors_batchnorm_in_eval_mode():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    model.eval()
    extractor = model[:-1]  # a new Sequential whose own flag is True while its children are in eval mode
    data = make_data(8)
    stats = model[1].running_mean.clone()
    feature_collision(extractor, data.images[0], data.images[1:3], steps=2)
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(model[1].running_mean, stats)

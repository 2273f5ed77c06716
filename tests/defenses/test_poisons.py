"""Availability poisons: each stays within its published budget and has its defining structure."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader import poisons
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.victim import small_cnn
from eclipse_loader.poisons.crafted import _pgd


def _delta(clean: LabelledImages, poisoned: LabelledImages) -> np.ndarray:
    assert poisoned.images.shape == clean.images.shape and poisoned.images.dtype == np.uint8
    np.testing.assert_array_equal(poisoned.labels, clean.labels)
    return (poisoned.images.astype(np.float64) - clean.images) / 255.0


def _l2(delta: np.ndarray) -> np.ndarray:
    return np.sqrt((delta.reshape(len(delta), -1) ** 2).sum(1))


def test_ar_is_l2_bounded_and_samplewise(cifar_small):
    delta = _delta(cifar_small, poisons.autoregressive(cifar_small, l2=1.0))
    norms = _l2(delta)
    assert norms.max() <= 1.0 + 0.02  # rounding to grey levels
    assert np.median(norms) > 0.9  # clipping at 0/255 only trims a little
    members = np.flatnonzero(cifar_small.labels == 3)[:2]
    assert not np.array_equal(delta[members[0]], delta[members[1]])  # a fresh sequence per image


def test_ar_perturbation_is_predicted_by_its_class_filter():
    """Before rounding, every pixel after the start region is the AR combination of its causal window."""
    from eclipse_loader.poisons.model_free import _ar_coefficients, _ar_sequences

    rng = np.random.default_rng(0)
    coeffs = _ar_coefficients(rng, (32, 32, 3), 3)
    seq = _ar_sequences(coeffs, 2, (32, 32, 3), rng)  # (N, H, W, C)
    i, j = 10, 17
    window = seq[:, i - 2:i + 1, j - 2:j + 1, :].transpose(0, 3, 1, 2)
    np.testing.assert_allclose(seq[:, i, j, :], (window * coeffs).sum(axis=(2, 3)), rtol=1e-9, atol=1e-12)


def test_lsp_is_classwise_patchwise_and_l2_bounded(cifar_small):
    delta = _delta(cifar_small, poisons.lsp(cifar_small, l2=1.30, patch=8))
    norms = _l2(delta)
    assert norms.max() <= 1.30 + 0.02 and np.median(norms) > 1.15
    # away from clipping, one class's images share one pattern, constant on 8x8 blocks
    raw = np.rint(delta * 255)
    unclipped = (cifar_small.images > 30) & (cifar_small.images < 225)
    members = np.flatnonzero(cifar_small.labels == 5)
    a, b = members[:2]
    both = unclipped[a] & unclipped[b]
    np.testing.assert_array_equal(raw[a][both], raw[b][both])
    block = raw[a, :8, :8, 0][unclipped[a, :8, :8, 0]]
    assert np.ptp(block) <= 1  # one value per block (±1 from rounding)


def test_ops_changes_one_pixel_at_one_place_per_class(cifar_small):
    poisoned = poisons.one_pixel_shortcut(cifar_small)
    changed = (poisoned.images != cifar_small.images).any(-1)  # (N, H, W)
    assert changed.sum((1, 2)).max() <= 1
    for label in range(10):
        members = np.flatnonzero(cifar_small.labels == label)
        pixels = {tuple(poisoned.images[m][changed[m]].ravel()) for m in members if changed[m].any()}
        positions = {tuple(np.argwhere(changed[m])[0]) for m in members if changed[m].any()}
        assert len(positions) == 1 and len(pixels) == 1
        assert set(next(iter(pixels))) <= {0, 255}  # a saturated colour


def test_cuda_filter_is_classwise_and_keeps_flat_images():
    flat = LabelledImages(np.full((20, 32, 32, 3), 77, np.uint8), np.arange(20) % 10, 10)
    np.testing.assert_array_equal(poisons.convolution_based(flat).images, flat.images)


def test_cuda_blurs_within_the_neighbourhood_range(cifar_small):
    poisoned = poisons.convolution_based(cifar_small, blur=0.3).images.astype(int)
    x = cifar_small.images.astype(int)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    windows = np.stack([padded[:, i:i + 32, j:j + 32] for i in range(3) for j in range(3)])
    assert (poisoned >= windows.min(0)).all() and (poisoned <= windows.max(0)).all()
    assert (poisoned != x).mean() > 0.5


def test_classwise_noise_linf(cifar_small):
    delta = _delta(cifar_small, poisons.classwise_noise(cifar_small, epsilon=8 / 255))
    assert np.abs(delta).max() <= 8 / 255 + 1e-9


@pytest.mark.parametrize("make", [poisons.autoregressive, poisons.lsp, poisons.classwise_noise])
def test_bad_budget_is_refused(cifar_small, make):
    with pytest.raises(ValueError, match="must be positive"):
        make(cifar_small, -1.0)


def test_error_minimizing_pgd_lowers_the_loss_within_budget():
    torch.manual_seed(0)
    model = small_cnn(10, 8).eval()
    x, y = torch.rand(16, 3, 32, 32), torch.randint(0, 10, (16,))
    eps = 8 / 255
    deltas = {sign: _pgd(model, x, torch.zeros_like(x), y, epsilon=eps, step_size=2 / 255, steps=5, sign=sign,
                         transform=lambda v: v) for sign in (-1.0, 1.0)}
    loss = {sign: float(torch.nn.functional.cross_entropy(model(x + d), y)) for sign, d in deltas.items()}
    clean = float(torch.nn.functional.cross_entropy(model(x), y))
    assert loss[-1.0] < clean < loss[1.0]  # minimising descends, maximising ascends
    for delta in deltas.values():
        assert delta.abs().max() <= eps + 1e-7 and ((x + delta) >= 0).all() and ((x + delta) <= 1).all()


def test_error_minimizing_end_to_end_stays_in_budget(cifar_small):
    data = cifar_small.subset(np.arange(64))
    poisoned = poisons.error_minimizing(data, lambda k: small_cnn(k, 8), pgd_steps=2, train_steps=2, max_rounds=1,
                                        batch_size=32)
    assert np.abs(_delta(data, poisoned)).max() <= 8 / 255 + 1e-9
    assert (poisoned.images != data.images).mean() > 0.3


def test_tap_moves_predictions_towards_the_next_class(cifar_small):
    torch.manual_seed(0)
    data = cifar_small.subset(np.arange(64))
    model = small_cnn(10, 8).eval()
    with torch.no_grad():
        model[-1].weight.mul_(30.0)  # confident logits, as a trained model has
    poisoned = poisons.targeted_adversarial(data, model, steps=10, step_size=2 / 255, transform=lambda v: v)
    assert np.abs(_delta(data, poisoned)).max() <= 8 / 255 + 1e-9
    targets = torch.from_numpy((data.labels + 1) % 10)

    def target_loss(d: LabelledImages) -> float:
        with torch.no_grad():
            x = torch.from_numpy(d.images).permute(0, 3, 1, 2).float() / 255
            return float(torch.nn.functional.cross_entropy(model(x), targets))

    assert target_loss(poisoned) < target_loss(data) - 0.1


def test_compensation_eot_draws_grayscale_and_noise():
    torch.manual_seed(0)
    x = torch.rand(4000, 3, 4, 4) * 0.5 + 0.25
    out = compensation = poisons.compensation_eot(p_gray=0.4, sigma=0.05)(x)
    assert compensation.shape == x.shape
    residual = out - x
    gray = (residual.std(dim=(1, 2, 3)) > 0.1)  # grayscale samples moved far more than the noise
    assert 0.35 < gray.float().mean() < 0.45
    assert abs(float(residual[~gray].std()) - 0.05) < 0.003


def test_denoiser_eot_is_differentiable():
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet

    torch.manual_seed(0)
    view = poisons.denoiser_eot(build_unet("tiny"), build_scheduler().alphas_cumprod, t_star=100)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    out = view(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="t_star"):
        poisons.denoiser_eot(build_unet("tiny"), build_scheduler().alphas_cumprod, t_star=0)

"""The airbench94-style victim: architecture, whitening, alternating flip, translation, compensation, learning."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.airbench import (AirbenchConfig, AirbenchNet, _triangle, evaluate_tta, predict_logits,
                                                train_airbench_victim, train_flops_per_image)
from eclipse_loader.evaluation.airbench_loader import GpuResidentLoader
from eclipse_loader.loading.config import AugmentConfig


def _unique(n: int, seed: int = 0) -> LabelledImages:
    """Random images whose label is their index (so a batch tells which image each row is)."""
    rng = np.random.default_rng(seed)
    return LabelledImages(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n, dtype=np.int64), n)


def test_network_matches_the_published_size():
    net = AirbenchNet()
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.97e6, rel=0.01)  # paper: 1.97 M
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert not net.whiten.weight.requires_grad and net.whiten.bias.requires_grad
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 6 and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)
    assert train_flops_per_image() == pytest.approx(0.72e9, rel=0.03)  # 0.36 PFLOP / (50k images x 10 epochs)


def test_whitening_decorrelates_the_patches():
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.rand(64, 3, 36, 36), 5, stride=1)  # spatially correlated
    x = 0.5 * x + 0.5 * x.mean(1, keepdim=True)  # and correlated across channels
    net = AirbenchNet()
    net.init_whitening(x, eps=1e-9)
    with torch.no_grad():
        out = net.whiten(net.normalize(x))[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = torch.cov(out.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.02)
    assert torch.equal(net.whiten.weight[12:], -net.whiten.weight[:12])


def test_alternating_flip_inverts_every_other_epoch():
    data = _unique(64)
    loader = GpuResidentLoader(data, AugmentConfig(translate_padding=0, compensate=False), 64, 2, 0, torch.device("cpu"))
    views = []
    for epoch in range(3):
        x, y = next(iter(loader.epoch(epoch)))
        views.append(x[torch.argsort(y)])
    original = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    flipped0 = (views[0] != original).flatten(1).any(1)
    assert 10 < int(flipped0.sum()) < 54  # about half flipped at epoch 0
    assert torch.equal(views[1], torch.where(flipped0.view(-1, 1, 1, 1), original, original.flip(-1)))
    assert torch.equal(views[2], views[0])


def test_translation_is_a_reflect_padded_crop_of_at_most_two_pixels():
    data = _unique(16)
    loader = GpuResidentLoader(data, AugmentConfig(flip=False, compensate=False), 16, 2, 1, torch.device("cpu"))
    x, y = next(iter(loader.epoch(0)))
    padded = torch.nn.functional.pad(torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255, (2,) * 4,
                                     mode="reflect")
    shifts = set()
    for row, label in zip(x, y.tolist()):
        found = [(dy, dx) for dy in range(5) for dx in range(5)
                 if torch.equal(row, padded[label, :, dy:dy + 32, dx:dx + 32])]
        assert found, f"image {label} is no 2-px translation of its original"
        shifts.add(found[0])
    assert len(shifts) > 3


def test_compensation_runs_on_the_batches_and_mean_std_is_refused():
    data = _unique(32)
    gray = GpuResidentLoader(data, AugmentConfig(p_gray=1.0, sigma=0.0), 32, 2, 0, torch.device("cpu"))
    x, _ = next(iter(gray.epoch(0)))
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    noisy = GpuResidentLoader(data, AugmentConfig(flip=False, translate_padding=0, p_gray=0.0, sigma=0.05), 32, 2, 0,
                       torch.device("cpu"))
    x, y = next(iter(noisy.epoch(0)))
    clean = torch.from_numpy(data.images[y.numpy()]).permute(0, 3, 1, 2).float() / 255
    assert 0.02 < float((x - clean).std()) < 0.08
    with pytest.raises(ValueError, match="mean/std"):
        GpuResidentLoader(data, AugmentConfig(mean=(0.5,) * 3, std=(0.2,) * 3), 32, 2, 0, torch.device("cpu"))


def test_schedule_and_tta_levels():
    total = 100
    assert _triangle(0, total) == pytest.approx(0.2) and _triangle(23, total) == pytest.approx(1.0)
    assert _triangle(total, total) == pytest.approx(0.07)
    net = AirbenchNet().eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(predict_logits(net, x, 0), net(x))
        assert torch.allclose(predict_logits(net, x, 1), 0.5 * (net(x) + net(x.flip(-1))))
    assert not torch.allclose(predict_logits(net, x, 2), predict_logits(net, x, 1))


def _colour_classes(n: int, seed: int) -> LabelledImages:
    """10 classes, each a colour and a stripe orientation, under noise: easy to learn, not trivial."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    colours = np.random.default_rng(99).integers(40, 216, (10, 3))
    images = np.repeat(np.repeat(colours[labels][:, None, None, :], 32, 1), 32, 2).astype(np.float64)
    stripes = (np.arange(32) // 4 % 2) * 40.0
    vertical, horizontal = stripes[None, None, :, None], stripes[None, :, None, None]
    images += np.where((labels % 2 == 0)[:, None, None, None], vertical, horizontal)
    images += rng.normal(0, 30, images.shape)
    return LabelledImages(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64), 10)


def test_the_recipe_learns_and_reports_a_victim_result():
    train, test = _colour_classes(600, 0), _colour_classes(300, 1)
    config = AirbenchConfig(epochs=8, batch_size=100, widths=(16, 32, 32))
    result = train_airbench_victim(train, test, AugmentConfig(compensate=False), config=config, seed=0)
    assert result.test_accuracy > 0.8 and result.epochs == 8 and result.train_seconds > 0  # chance: 0.1
    assert evaluate_tta(result.model, test, tta_level=0) > 0.8
    with pytest.raises(ValueError, match="empty"):
        train_airbench_victim(train.subset(np.arange(0)), test, None, config=config)


def test_a_defence_batch_transform_runs_before_the_crop():
    data = _unique(8)
    inverted = lambda images, indices, epoch: 255 - images  # noqa: E731
    loader = GpuResidentLoader(data, AugmentConfig(flip=False, compensate=False), 8, 2, 0, torch.device("cpu"),
                               batch_transform=inverted)
    x, y = next(iter(loader.epoch(0)))
    padded = torch.nn.functional.pad((255 - torch.from_numpy(data.images).permute(0, 3, 1, 2)).float() / 255,
                                     (2,) * 4, mode="reflect")
    for row, label in zip(x, y.tolist()):
        assert any(torch.equal(row, padded[label, :, dy:dy + 32, dx:dx + 32]) for dy in range(5) for dx in range(5))

"""A small victim classifier and its training loop (plain torch), to score a dataset quickly on CPU."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from ..loading.torch_loader import TorchEpochLoader


def small_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A 4-block CNN (about 61 k parameters at width 16) that trains in seconds per epoch on CPU."""

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    return nn.Sequential(
        block(3, width), block(width, 2 * width), nn.MaxPool2d(2),
        block(2 * width, 4 * width), nn.MaxPool2d(2),
        block(4 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


@dataclass(frozen=True)
class VictimResult:
    test_accuracy: float
    train_seconds: float
    epochs: int


def evaluate(model: nn.Module, data: LabelledImages, batch_size: int = 500) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (no augmentation)."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in TorchEpochLoader(data, batch_size):
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data)


def train_victim(
    train: LabelledImages,
    test: LabelledImages,
    augment: AugmentConfig,
    *,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.05,
    seed: int = 0,
    model_factory: Callable[[int], nn.Module] = small_cnn,
    log: Optional[Callable[[str], None]] = None,
) -> VictimResult:
    """Train a fresh victim on ``train`` (SGD, momentum 0.9, one-cycle LR) and report last-epoch test accuracy."""
    torch.manual_seed(seed)
    model = model_factory(train.num_classes)
    loader = TorchEpochLoader(train, batch_size, augment=augment, shuffle=True, drop_last=True, seed=seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=epochs * len(loader))
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if log is not None:
            log(f"  epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}")
    seconds = time.perf_counter() - start
    return VictimResult(evaluate(model, test), seconds, epochs)

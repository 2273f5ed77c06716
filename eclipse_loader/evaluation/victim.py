"""Victim classifiers and their training loop (plain torch), to score a (defended) dataset.

* `small_cnn`: ~61 k parameters, the demo's victim.
* `quick_cnn`: ~0.3 M parameters, pooled early so it trains at ~2,000 images/s on 2 CPU cores
  (channels-last); the ``cpu-quick`` protocol's victim.
* `resnet18_cifar`: torchvision's ResNet-18 with the CIFAR stem (3x3 stride-1 first convolution,
  no max-pool), the paper protocol's victim.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Union

import torch
from torch import nn

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from ..loading.torch_loader import BatchTransform, TorchEpochLoader

ModelFactory = Callable[[int], nn.Module]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def small_cnn(num_classes: int = 10, width: int = 16) -> nn.Module:
    """A 4-block CNN (about 61 k parameters at width 16) that trains in seconds per epoch on CPU."""
    return nn.Sequential(
        _conv_bn_relu(3, width), _conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),
        _conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2),
        _conv_bn_relu(4 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


def quick_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    """A 4-block CNN pooled after every block (about 0.29 M parameters at width 32)."""
    return nn.Sequential(
        _conv_bn_relu(3, width), nn.MaxPool2d(2),
        _conv_bn_relu(width, 2 * width), nn.MaxPool2d(2),
        _conv_bn_relu(2 * width, 4 * width), nn.MaxPool2d(2),
        _conv_bn_relu(4 * width, 4 * width), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )


def wide_cnn(num_classes: int = 10) -> nn.Module:
    """`quick_cnn` at width 64 (about 1.2 M parameters): the ``cpu-wide`` protocol's victim."""
    return quick_cnn(num_classes, width=64)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 (torchvision) with the usual CIFAR stem: 3x3 stride-1 first convolution, no max-pool."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


VICTIMS: dict[str, ModelFactory] = {"small_cnn": small_cnn, "quick_cnn": quick_cnn, "wide_cnn": wide_cnn,
                                     "resnet18": resnet18_cifar}


@dataclass(frozen=True)
class TrainSettings:
    """How a victim is trained. Defaults: the fast CPU settings (one-cycle LR, weight decay 5e-4).

    `paper_training` gives ECLIPSE's protocol: SGD lr 0.1 constant, momentum 0.9, no weight decay,
    batch 128, 80 epochs, last-epoch accuracy.
    """

    epochs: int = 15
    batch_size: int = 128
    lr: float = 0.05
    schedule: Literal["onecycle", "constant"] = "onecycle"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"epochs, batch_size and lr must be positive: {self}")
        if self.schedule not in ("onecycle", "constant"):
            raise ValueError(f"schedule must be 'onecycle' or 'constant', got {self.schedule!r}")


def paper_training() -> TrainSettings:
    """ECLIPSE's victim protocol (paper §4.1 and its train.py)."""
    return TrainSettings(epochs=80, batch_size=128, lr=0.1, schedule="constant", momentum=0.9, weight_decay=0.0,
                         nesterov=False)


@dataclass(frozen=True)
class VictimResult:
    test_accuracy: float
    train_seconds: float
    epochs: int
    model: Optional[nn.Module] = field(default=None, repr=False, compare=False)


def evaluate(model: nn.Module, data: LabelledImages, batch_size: int = 500,
             device: Union[str, torch.device, None] = None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (no augmentation)."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in TorchEpochLoader(data, batch_size):
            x = x.to(device, memory_format=torch.channels_last)
            correct += int((model(x).argmax(1).cpu() == y).sum())
    return correct / len(data)


def train_classifier(
    train: LabelledImages,
    augment: Optional[AugmentConfig],
    *,
    training: TrainSettings = TrainSettings(),
    seed: int = 0,
    model_factory: ModelFactory = small_cnn,
    device: Union[str, torch.device] = "cpu",
    log: Optional[Callable[[str], None]] = None,
    batch_transform: Optional[BatchTransform] = None,
) -> nn.Module:
    """Train a fresh ``model_factory`` network on ``train`` with ``training``; returns it (eval mode).

    ``batch_transform``: a defence's extra per-batch step before crop/flip (`TorchEpochLoader`)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model = model_factory(train.num_classes).to(device, memory_format=torch.channels_last)
    loader = TorchEpochLoader(train, training.batch_size, augment=augment, shuffle=True, drop_last=True, seed=seed,
                              batch_transform=batch_transform)
    optimizer = torch.optim.SGD(model.parameters(), lr=training.lr, momentum=training.momentum,
                                nesterov=training.nesterov and training.momentum > 0, weight_decay=training.weight_decay)
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=training.lr, total_steps=training.epochs * len(loader))
                if training.schedule == "onecycle" else None)
    for epoch in range(training.epochs):
        model.train()
        for x, y in loader:
            x = x.to(device, memory_format=torch.channels_last, non_blocking=True)
            loss = nn.functional.cross_entropy(model(x), y.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if schedule is not None:
                schedule.step()
        if log is not None:
            log(f"  epoch {epoch + 1}/{training.epochs}: loss {loss.item():.3f}")
    return model.eval()


def train_victim(
    train: LabelledImages,
    test: LabelledImages,
    augment: Optional[AugmentConfig],
    *,
    epochs: int = 15,
    batch_size: int = 128,
    lr: float = 0.05,
    training: Optional[TrainSettings] = None,
    seed: int = 0,
    model_factory: ModelFactory = small_cnn,
    device: Union[str, torch.device] = "cpu",
    log: Optional[Callable[[str], None]] = None,
    batch_transform: Optional[BatchTransform] = None,
) -> VictimResult:
    """Train a fresh victim on ``train`` and report its last-epoch accuracy on ``test``.

    ``training`` overrides ``epochs``/``batch_size``/``lr`` (default: SGD, momentum 0.9, one-cycle LR);
    ``batch_transform`` as in `train_classifier`.
    """
    training = training or TrainSettings(epochs=epochs, batch_size=batch_size, lr=lr)
    start = time.perf_counter()
    model = train_classifier(train, augment, training=training, seed=seed, model_factory=model_factory, device=device,
                             log=log, batch_transform=batch_transform)
    seconds = time.perf_counter() - start
    return VictimResult(evaluate(model, test, device=device), seconds, training.epochs, model)

"""The proxy classifier: a small CNN trained on a candidate's defended images, scored on trusted images.

A poison hurts as the model fits it, so the proxy must fit its training set: the default (2,000
class-balanced images x 30 epochs) ranked two outside poisons' defences correctly where 5,000 x 4
could not (issue 18). Training is deterministic given the seed on one thread: initialisation from
``torch.manual_seed(seed)``, batch order ``default_rng(seed + epoch)``, flip/translate and the
compensation keyed by ``(seed, epoch, index)`` (the loaders' own rules), RSK+FF from a generator
seeded by ``(seed, epoch)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..compensation import counter_rng as rng
from ..compensation.functional import compensate_batch
from ..data.images import LabelledImages
from ..evaluation.victim import small_cnn
from ..loading.torch_loader import flip_and_translate
from .augment import rsk_ff_keyed
from .candidates import Candidate


@dataclass(frozen=True)
class ProxySettings:
    """Size of the proxy run. ``images``: class-balanced training images per candidate; ``epochs``;
    ``width`` of `small_cnn`; SGD (Nesterov, momentum 0.9, weight decay 5e-4) with a one-cycle ``lr``."""

    images: int = 2000
    epochs: int = 30
    width: int = 16
    batch_size: int = 128
    lr: float = 0.05

    def __post_init__(self) -> None:
        if min(self.images, self.epochs, self.width, self.batch_size) < 1 or self.lr <= 0:
            raise ValueError(f"proxy settings must be positive: {self}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _augment(images: torch.Tensor, idx: torch.Tensor, candidate: Candidate, seed: int, epoch: int) -> torch.Tensor:
    """One epoch's online augmentation of a uint8 batch: RSK+FF, crop + flip, compensation."""
    if candidate.augment == "rsk-ff":
        images = rsk_ff_keyed(images, idx, seed, epoch)
    keys = rng.sample_key(seed, epoch, idx)
    images = flip_and_translate(images, rng.hash32(keys ^ 0x7F4A7C15), True, 4)
    p_gray, sigma = candidate.p_gray_sigma
    if p_gray > 0 or sigma > 0:
        images = compensate_batch(images, idx, p_gray=p_gray, sigma=sigma, seed=seed, epoch=epoch)
    return images


def train_proxy(train: LabelledImages, candidate: Candidate, settings: ProxySettings = ProxySettings(), seed: int = 0,
                on_epoch: Optional[Callable[[int], None]] = None) -> nn.Module:
    """Train a fresh `small_cnn` on ``train`` (already through the candidate's offline steps) with the
    candidate's online augmentation; returns the model in eval mode."""
    torch.manual_seed(seed)
    model = small_cnn(train.num_classes, width=settings.width).to(memory_format=torch.channels_last)
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2)
    labels = torch.from_numpy(train.labels)
    batch = min(settings.batch_size, len(train))
    steps_per_epoch = len(train) // batch
    optimizer = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=settings.lr,
                                                   total_steps=settings.epochs * steps_per_epoch)
    for epoch in range(settings.epochs):
        model.train()
        order = torch.from_numpy(np.random.default_rng(seed + epoch).permutation(len(train)))
        for step in range(steps_per_epoch):
            idx = order[step * batch:(step + 1) * batch]
            x = _augment(images[idx], idx, candidate, seed, epoch).float().div_(255.0)
            loss = nn.functional.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        if on_epoch is not None:
            on_epoch(epoch)
    return model.eval()


def correct_mask(model: nn.Module, data: LabelledImages, batch_size: int = 500) -> np.ndarray:
    """Boolean per image of ``data``: did ``model`` classify it right (no augmentation)?"""
    out = np.empty(len(data), dtype=bool)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            x = torch.from_numpy(data.images[start:start + batch_size]).permute(0, 3, 1, 2).float().div_(255.0)
            pred = model(x.contiguous(memory_format=torch.channels_last)).argmax(1).numpy()
            out[start:start + len(pred)] = pred == data.labels[start:start + batch_size]
    return out

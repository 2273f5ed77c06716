"""An airbench94-style CIFAR-10 victim: ~94% clean in about 10 epochs (seconds on one GPU).

Written from the published description (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single
GPU", arXiv 2404.00498, and its cifar10-airbench hyper-parameters), not from its code:

* network: 2x2 patch-whitening convolution (24 filters = the 12 eigenvectors of the 2x2-patch
  covariance of the training images scaled by 1/sqrt(eigenvalue) and their negatives; weights frozen,
  bias trained for the first 3 epochs), GELU, then three blocks of conv3x3 -> maxpool2 -> BN -> GELU ->
  conv3x3 -> BN -> GELU with widths 64/256/256, a 3x3 max-pool, a bias-free linear head scaled by
  1/9. Convolutions start partly as identities (dirac); BatchNorm has a fixed unit scale, a learned
  bias and running-stat momentum 0.4 (airbench's "0.6");
* training: Nesterov SGD, momentum 0.85, batch 1024, learning rate 11.5 and weight decay 0.0153 per
  1024 examples in airbench's decoupled form, BN biases at 64x the learning rate, label smoothing
  0.2 on a summed loss, a triangular schedule (0.2 -> 1 over the first 23% of steps, then -> 0.07),
  Lookahead (every 5 steps the weights are pulled to an EMA with decay 0.95^5 (step/total)^3);
* augmentation: 2-pixel reflect-padded translation and the derandomised "alternating" flip (each
  image's flip is drawn once and inverted every other epoch), on a GPU-resident copy of the data;
* evaluation: test-time augmentation (level 2: the image and its mirror, plus both at a 1-pixel
  translation, logits averaged).

The network takes [0, 1] images (it normalises with the CIFAR-10 mean/std itself), like the other
victims. The harness's defence augmentation is honoured as far as it goes beyond crop + flip: its
corruption compensation (grayscale + noise) runs on every training batch, after the translation.
Under CUDA the model runs in channels-last bf16 autocast. The network is in `airbench_net`, the
data path in `airbench_loader`; this module trains and evaluates (every name importable from here).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import nn

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from .airbench_loader import BatchTransform, GpuResidentLoader, to_float
from .airbench_net import AirbenchNet, airbench_net, autocast_factory, with_autocast
from .victim import VictimResult


@dataclass(frozen=True)
class AirbenchConfig:
    """airbench94's published hyper-parameters (``lr`` and ``weight_decay`` per 1024 examples)."""

    epochs: int = 10
    batch_size: int = 1024
    lr: float = 11.5
    momentum: float = 0.85
    weight_decay: float = 0.0153
    bias_scaler: float = 64.0
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    translate: int = 2
    widths: tuple[int, int, int] = (64, 256, 256)
    tta_level: int = 2
    lookahead: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"epochs, batch_size, lr must be positive and momentum in [0, 1): {self}")
        if self.tta_level not in (0, 1, 2):
            raise ValueError(f"tta_level must be 0, 1 or 2, got {self.tta_level}")


def _triangle(step: int, total: int, warmup: float = 0.23, start: float = 0.2, end: float = 0.07) -> float:
    peak = max(1, int(warmup * total))
    if step < peak:
        return start + (1.0 - start) * step / peak
    return 1.0 + (end - 1.0) * (step - peak) / max(1, total - peak)


class _Lookahead:
    """Every call pulls the float parameters and buffers towards an EMA and resets them onto it."""

    def __init__(self, model: nn.Module) -> None:
        self.ema = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float) -> None:
        for key, value in model.state_dict().items():
            if key in self.ema:
                self.ema[key].lerp_(value, 1.0 - decay)
                value.copy_(self.ema[key])


def train_airbench(
    train: LabelledImages,
    augment: Optional[AugmentConfig],
    *,
    config: AirbenchConfig = AirbenchConfig(),
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Optional[Callable[[str], None]] = None,
    batch_transform: Optional[BatchTransform] = None,
) -> AirbenchNet:
    """Train a fresh airbench network on ``train``; returns it in eval mode (fp32 weights).

    ``augment``: ``None`` trains without augmentation; otherwise its ``flip`` and ``translate_padding > 0``
    switch on airbench's alternating flip and ``config.translate``-pixel translation, and its
    compensation (if ``compensate``) runs on every batch. ``batch_transform``: a defence's extra per-batch
    step on the uint8 images, before the translation.
    """
    if len(train) == 0:
        raise ValueError("cannot train on an empty dataset")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = AirbenchNet(train.num_classes, config.widths).to(device)
    loader = GpuResidentLoader(train, augment, config.batch_size, config.translate, seed, device, batch_transform)
    model.init_whitening(to_float(loader.images[:5000]))
    model = model.to(memory_format=torch.channels_last)
    # airbench's decoupled hyper-parameters -> PyTorch SGD on a summed loss
    kilostep = 1024 * (1 + 1 / (1 - config.momentum))
    lr = config.lr / kilostep
    wd = config.weight_decay * loader.batch_size / kilostep
    norm_biases = [p for n, p in model.named_parameters() if ".bias" in n and p.requires_grad and "whiten" not in n]
    others = [p for p in model.parameters() if p.requires_grad and all(p is not q for q in norm_biases)]
    lr_bias = lr * config.bias_scaler
    optimizer = torch.optim.SGD([dict(params=norm_biases, lr=lr_bias, weight_decay=wd / lr_bias),
                                 dict(params=others, lr=lr, weight_decay=wd / lr)],
                                momentum=config.momentum, nesterov=True)
    total = config.epochs * len(loader)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _triangle(step, total))
    lookahead = _Lookahead(model) if config.lookahead else None
    step = 0
    for epoch in range(config.epochs):
        model.whiten.bias.requires_grad_(epoch < config.whiten_bias_epochs)
        model.train()
        for x, y in loader.epoch(epoch):
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing,
                                               reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if lookahead is not None and step % 5 == 0:
                lookahead.update(model, 0.95**5 * (step / total) ** 3)
        if log is not None:
            log(f"  airbench epoch {epoch + 1}/{config.epochs}: loss {loss.item() / len(y):.3f}")
    if lookahead is not None:
        lookahead.update(model, 1.0)  # end on the EMA weights
    return model.eval()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, tta_level: int = 2) -> torch.Tensor:
    """Logits of a [0, 1] float batch with airbench's test-time augmentation (0: none, 1: + mirror,
    2: + mirror of 1-pixel up-left and down-right translations, averaged with weight 1/2)."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.is_cuda):
            return model(batch.contiguous(memory_format=torch.channels_last)).float()

    def mirrored(batch: torch.Tensor) -> torch.Tensor:
        return run(batch) if tta_level == 0 else 0.5 * (run(batch) + run(batch.flip(-1)))

    logits = mirrored(x)
    if tta_level < 2:
        return logits
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    h, w = x.shape[-2:]
    shifted = 0.5 * (mirrored(padded[:, :, :h, :w]) + mirrored(padded[:, :, 2:, 2:]))
    return 0.5 * logits + 0.5 * shifted


def evaluate_tta(model: nn.Module, data: LabelledImages, tta_level: int = 2, batch_size: int = 2000,
                 device: Union[str, torch.device, None] = None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` with `predict_logits`' test-time augmentation."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x = to_float(torch.from_numpy(data.images[start:start + batch_size]).to(device).permute(0, 3, 1, 2))
        y = torch.from_numpy(data.labels[start:start + batch_size].astype("int64")).to(device)
        correct += int((predict_logits(model, x, tta_level).argmax(1) == y).sum())
    return correct / len(data)


def train_airbench_victim(
    train: LabelledImages,
    test: LabelledImages,
    augment: Optional[AugmentConfig],
    *,
    config: AirbenchConfig = AirbenchConfig(),
    seed: int = 0,
    device: Union[str, torch.device] = "cpu",
    log: Optional[Callable[[str], None]] = None,
    batch_transform: Optional[BatchTransform] = None,
) -> VictimResult:
    """`train_airbench` on ``train``, then its TTA accuracy on ``test`` (the harness's `VictimResult`)."""
    start = time.perf_counter()
    model = train_airbench(train, augment, config=config, seed=seed, device=device, log=log,
                           batch_transform=batch_transform)
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return VictimResult(evaluate_tta(model, test, config.tta_level, device=device), seconds, config.epochs, model)


def train_flops_per_image(config: AirbenchConfig = AirbenchConfig()) -> float:
    """FLOPs of one training step per image (forward + backward), counted with FlopCounterMode on CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    model = AirbenchNet(10, config.widths)
    x = torch.rand(2, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return counter.get_total_flops() / 2


__all__ = ["AirbenchConfig", "AirbenchNet", "airbench_net", "autocast_factory", "evaluate_tta", "predict_logits",
           "train_airbench", "train_airbench_victim", "train_flops_per_image", "with_autocast"]

"""The airbench94 network (patch whitening, three conv blocks, a scaled linear head) and the
channels-last bf16 autocast wrapper the poison crafters use; see `eclipse_loader.evaluation.airbench`."""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from ..data.images import LabelledImages
from .airbench_loader import to_float

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class _Normalize(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        nn.init.dirac_(conv.weight[:c_in])  # the first c_in filters start as identities
    return conv


def _norm(c: int) -> nn.BatchNorm2d:
    norm = nn.BatchNorm2d(c, momentum=0.4, eps=1e-12)
    norm.weight.requires_grad_(False)  # fixed unit scale; the bias is learned
    return norm


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(_conv(c_in, c_out), nn.MaxPool2d(2), _norm(c_out), nn.GELU(),
                         _conv(c_out, c_out), _norm(c_out), nn.GELU())


class AirbenchNet(nn.Module):
    """The airbench94 network on [0, 1] inputs; call `init_whitening` on training images before training."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256)) -> None:
        super().__init__()
        w1, w2, w3 = widths
        self.normalize = _Normalize()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        self.body = nn.Sequential(nn.GELU(), _block(24, w1), _block(w1, w2), _block(w2, w3), nn.MaxPool2d(3),
                                  nn.Flatten())
        self.head = nn.Linear(w3, num_classes, bias=False)
        self.scale = 1.0 / 9.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the head's input as float32, so a hook on it (DataElixir's penultimate features) never sees bf16
        return self.head(self.body(self.whiten(self.normalize(x))).float()) * self.scale

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the whitening filters from the 2x2-patch covariance of ``images`` (float NCHW in [0, 1])."""
        x = self.normalize(images.float().to(self.whiten.weight.device))
        patches = nn.functional.unfold(x, 2).transpose(1, 2).reshape(-1, 12).double()  # (N * L, C * 2 * 2)
        patches = patches - patches.mean(0)
        covariance = patches.T @ patches / max(len(patches) - 1, 1)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps).view(-1, 1)).view(12, 3, 2, 2)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).to(self.whiten.weight.dtype))
        self.whiten.bias.zero_()


def airbench_net(num_classes: int = 10) -> AirbenchNet:
    """Model factory (the harness's ``ModelFactory``): the airbench94 network, whitening not yet set."""
    return AirbenchNet(num_classes)


class _Autocast(nn.Module):
    """Runs ``model`` under bf16 autocast on CUDA and returns float32 logits (crafting and evaluation)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            return self.model(x.contiguous(memory_format=torch.channels_last)).float()


def with_autocast(model: nn.Module) -> nn.Module:
    """``model`` behind a wrapper that runs it channels-last under bf16 autocast on CUDA (float32 logits);
    the wrapped network is ``.model``."""
    return _Autocast(model)


def autocast_factory(images: Optional[LabelledImages] = None,
                     widths: tuple[int, int, int] = (64, 256, 256)) -> Callable[[int], nn.Module]:
    """A factory of airbench networks for the poison crafters (`with_autocast`), whitening set from the
    first 5,000 of ``images`` when given."""

    def make(num_classes: int) -> nn.Module:
        net = AirbenchNet(num_classes, widths)
        if images is not None:
            net.init_whitening(to_float(torch.from_numpy(images.images[:5000]).permute(0, 3, 1, 2)))
        return _Autocast(net)

    return make

"""Train a CIFAR ResNet-18 on (purified) data with ECLIPSE's corruption compensation, via LightningCLI.

The data side is `eclipse_loader.EclipseDataModule` (FFCV loaders when ffcv imports, torch loaders
otherwise); the model side is the victim protocol of ECLIPSE's ``train.py``: SGD, momentum 0.9,
lr 0.1, no weight decay, batch 128, 80 epochs, constant learning rate, last-epoch accuracy reported.

    python integrations/lightning_cli/train_cifar.py fit --config integrations/lightning_cli/config.yaml
    python integrations/lightning_cli/train_cifar.py fit --config integrations/lightning_cli/config.yaml \
        --data.train purified/cifar10_train.beton --data.val cifar10:data/cifar10:test --trainer.max_epochs 80
    python integrations/lightning_cli/train_cifar.py fit --print_config     # every option, with defaults

Validation accuracy is logged as ``val_acc`` and printed once per epoch (``epoch N: val_acc ...``);
``test`` does the same with ``test_acc`` on ``data.test``; ``predict`` returns the predicted classes
of ``data.predict``. All four subcommands work with either data backend.
"""
from __future__ import annotations

from typing import Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.cli import LightningCLI
from torch import nn

from eclipse_loader import EclipseDataModule


#### Model ####

def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: a 3x3 stride-1 first conv and no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class CifarResNet(pl.LightningModule):
    """ResNet-18 classifier trained with SGD.

    Args:
        num_classes: number of classes of the data.
        lr: SGD learning rate (ECLIPSE: 0.1).
        momentum: SGD momentum (ECLIPSE: 0.9).
        weight_decay: L2 weight decay (ECLIPSE: 0; AVATAR-style protocols use 5e-4).
        lr_schedule: ``"constant"`` (ECLIPSE), ``"multistep"`` (x ``gamma`` at each of ``milestones``)
            or ``"cosine"`` (annealed to 0 over ``trainer.max_epochs``); stepped once per epoch.
        milestones: epochs at which ``"multistep"`` multiplies the rate by ``gamma``.
        gamma: the ``"multistep"`` factor.
    """

    def __init__(
        self,
        num_classes: int = 10,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "multistep", "cosine"] = "constant",
        milestones: tuple[int, ...] = (80, 100),
        gamma: float = 0.1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = resnet18_cifar(num_classes)
        self._correct = self._seen = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch
        loss = F.cross_entropy(self(images), labels)
        self.log("train_loss", loss, prog_bar=True, batch_size=len(labels))
        return loss

    def _evaluate_batch(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        images, labels = batch
        logits = self(images)
        self.log(f"{stage}_loss", F.cross_entropy(logits, labels), sync_dist=True, batch_size=len(labels))
        self._correct += int((logits.argmax(1) == labels).sum())
        self._seen += len(labels)

    def _report_accuracy(self, stage: str) -> None:
        counts = torch.tensor([self._correct, self._seen], dtype=torch.float64, device=self.device)
        correct, seen = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()  # summed over ranks
        accuracy = correct / max(seen, 1)
        self.log(f"{stage}_acc", accuracy, prog_bar=True)
        if not self.trainer.sanity_checking:
            self.print(f"epoch {self.current_epoch}: {stage}_acc {accuracy:.4f} ({int(correct)}/{int(seen)})")

    def on_validation_epoch_start(self) -> None:
        self._correct = self._seen = 0

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_batch(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._report_accuracy("val")

    def on_test_epoch_start(self) -> None:
        self._correct = self._seen = 0

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate_batch(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._report_accuracy("test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(1)

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.SGD(self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant":
            return optimizer
        if hp.lr_schedule == "multistep":
            scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(hp.milestones), gamma=hp.gamma)
        elif hp.lr_schedule == "cosine":
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, self.trainer.max_epochs))
        else:
            raise ValueError(f"lr_schedule must be 'constant', 'multistep' or 'cosine', got {hp.lr_schedule!r}")
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


#### CLI ####

def cli_main(args: list[str] | None = None) -> LightningCLI:
    return LightningCLI(
        CifarResNet,
        EclipseDataModule,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"max_epochs": 80},
        args=args,
    )


if __name__ == "__main__":
    cli_main()

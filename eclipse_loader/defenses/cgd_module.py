"""Lightning glue for CGD's stage 2: the guided fine-tuning loss as a module, the roll-back as a callback.

    scores = score_dataset(train, guide, suspicious_factory=quick_cnn)
    loader = DataLoader(ScoredDataset(train, scores), batch_size=256, drop_last=True,  # see cgd_finetune
                        sampler=SubsetRandomSampler(oversampled_indices(scores, train.labels)))
    trainer = L.Trainer(max_epochs=10, limit_train_batches=200, callbacks=[CGDRollback(val_split)])
    trainer.fit(CGDModule(backdoored_model), loader)
"""
from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from ..data.images import LabelledImages
from ..evaluation.victim import evaluate
from .cgd import CGDConfig, cgd_loss


class CGDModule(pl.LightningModule):
    """Fine-tunes ``model`` (the backdoored one) with `cgd_loss` on `ScoredDataset` batches (SGD, no momentum)."""

    def __init__(self, model: nn.Module, config: CGDConfig = CGDConfig()) -> None:
        super().__init__()
        self.model, self.config = model, config

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _, guide, s_guide, s_susp = batch
        loss = cgd_loss(self.model(x), y, guide, s_guide, s_susp, self.config)
        self.log("cgd_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.parameters(), lr=self.config.lr, weight_decay=self.config.weight_decay)


class CGDRollback(pl.Callback):
    """After every training epoch, score ``val`` (a clean split); on a drop of ``tolerance`` points below
    the best so far (the model before fine-tuning included), restore the previous epoch's weights and stop."""

    def __init__(self, val: LabelledImages, tolerance: float = 1.0) -> None:
        super().__init__()
        self.val, self.tolerance = val, float(tolerance)
        self.best = float("-inf")
        self.history: list[dict[str, Any]] = []
        self._previous: dict[str, torch.Tensor] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.best = evaluate(pl_module, self.val)
        self.history.append({"epoch": 0, "val_accuracy": self.best})
        pl_module.train()

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._previous = copy.deepcopy(pl_module.state_dict())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        acc = evaluate(pl_module, self.val)
        pl_module.train()
        record: dict[str, Any] = {"epoch": trainer.current_epoch + 1, "val_accuracy": acc}
        if acc <= self.best - self.tolerance / 100:
            pl_module.load_state_dict(self._previous)
            record["rolled_back"] = True
            trainer.should_stop = True
        else:
            self.best = max(self.best, acc)
        self.history.append(record)

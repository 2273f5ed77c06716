"""Lightning glue for EPIC: a callback that runs `EpicSelector` at the start of scheduled epochs.

Use it with a training loader built on the same `EpicSampler`::

    sampler = EpicSampler(len(train), seed=0)
    loader = DataLoader(IndexedDataset(train), batch_size=128, sampler=sampler)
    trainer = L.Trainer(callbacks=[EpicCallback(train, sampler, EpicSchedule(0.1, warmup=10, period=10))],
                        use_distributed_sampler=False)

The sampler's mask is changed in ``on_train_epoch_start``, before Lightning iterates the loader, so no
dataloader reload is needed. Under DDP (``use_distributed_sampler=False`` is then required, so that
Lightning leaves the sampler alone) the callback shards the sampler over the ranks; global rank 0 runs
the selection and broadcasts the new mask and its record, so every rank drops the same examples.
"""
from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from ..data.images import LabelledImages
from ..loading.config import Normalization
from .epic import EpicSampler, EpicSchedule, EpicSelector


class EpicCallback(pl.Callback):
    """Drop gradient-isolated examples from ``sampler`` during ``Trainer.fit`` (see `EpicSelector`)."""

    def __init__(
        self,
        data: LabelledImages,
        sampler: EpicSampler,
        schedule: EpicSchedule = EpicSchedule(),
        *,
        normalize: Optional[Normalization] = None,
        poison_mask: Optional[np.ndarray] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.selector = EpicSelector(data, sampler, schedule, normalize=normalize, poison_mask=poison_mask, seed=seed)

    @property
    def history(self) -> list[dict]:
        """One record per selection: epoch, isolated, newly_dropped, active (and poison recall)."""
        return self.selector.history

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.selector.sampler.set_distributed(trainer.world_size, trainer.global_rank)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_loader(trainer)
        epoch = trainer.current_epoch
        if not self.selector.schedule.fires(epoch):
            return
        if trainer.world_size == 1:
            self.selector.maybe_select(epoch, pl_module)
        else:
            state = None
            if trainer.is_global_zero:
                self.selector.maybe_select(epoch, pl_module)
                state = (self.selector.sampler.active.copy(), self.selector.history[-1])
            active, record = trainer.strategy.broadcast(state, src=0)
            if not trainer.is_global_zero:
                self.selector.sampler.drop(active)
                self.selector.history.append(record)
        record = self.selector.history[-1]
        pl_module.log_dict({f"epic/{k}": float(v) for k, v in record.items() if k != "epoch"},
                           on_epoch=True, rank_zero_only=True)

    def _check_loader(self, trainer: pl.Trainer) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            return
        sampler = self.selector.sampler
        if loader.sampler is not sampler and getattr(loader.batch_sampler, "sampler", None) is not sampler:
            raise RuntimeError("the training loader does not draw from this EpicCallback's EpicSampler; pass "
                               "DataLoader(..., sampler=sampler) and, under DDP, Trainer(use_distributed_sampler=False) "
                               "so that Lightning does not replace it")

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.selector.sampler.state_dict(), "history": list(self.selector.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selector.sampler.load_state_dict(state_dict["sampler"])
        self.selector.history[:] = state_dict["history"]

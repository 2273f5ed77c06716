"""Lightning glue for EPIC: a callback that runs `EpicSelector` at the start of scheduled epochs.

Use it with a training loader built on the same `EpicSampler`::

    sampler = EpicSampler(len(train), seed=0)
    loader = DataLoader(IndexedDataset(train), batch_size=128, sampler=sampler)
    trainer = L.Trainer(callbacks=[EpicCallback(train, sampler, EpicSchedule(0.1, warmup=10, period=10))],
                        use_distributed_sampler=False)

The sampler's mask is changed in ``on_train_epoch_start``, before Lightning iterates the loader, so no
dataloader reload is needed. Single-process only (the mask is not synchronised across ranks).
"""
from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np

from ..data.images import LabelledImages
from ..loading.config import AugmentConfig
from .epic import EpicSampler, EpicSchedule, EpicSelector


class EpicCallback(pl.Callback):
    """Drop gradient-isolated examples from ``sampler`` during ``Trainer.fit`` (see `EpicSelector`)."""

    def __init__(
        self,
        data: LabelledImages,
        sampler: EpicSampler,
        schedule: EpicSchedule = EpicSchedule(),
        *,
        normalize: Optional[AugmentConfig] = None,
        poison_mask: Optional[np.ndarray] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.selector = EpicSelector(data, sampler, schedule, normalize=normalize, poison_mask=poison_mask, seed=seed)

    @property
    def history(self) -> list[dict]:
        """One record per selection: epoch, isolated, newly_dropped, active (and poison recall)."""
        return self.selector.history

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size > 1:
            raise RuntimeError("EpicCallback is single-process: its sampler mask is not synchronised across ranks")
        if self.selector.maybe_select(trainer.current_epoch, pl_module) is not None:
            record = self.selector.history[-1]
            pl_module.log_dict({f"epic/{k}": float(v) for k, v in record.items() if k != "epoch"},
                               on_epoch=True, rank_zero_only=True)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.selector.sampler.state_dict(), "history": list(self.selector.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.selector.sampler.load_state_dict(state_dict["sampler"])
        self.selector.history[:] = state_dict["history"]

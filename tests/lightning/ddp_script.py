"""Run by tests/lightning/test_ddp.py: 2-process CPU DDP (gloo) fit with EclipseDataModule; each rank writes the
dataset indices it trained on (the labels are the indices) to OUT_DIR/rank{R}.txt. With a denoiser
directory as 4th argument the DataModule purifies first (local rank 0 in setup, rank 1 waits)."""
from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn

from eclipse_loader import EclipseDataModule


class RecordIndices(pl.LightningModule):
    """Labels are the sample indices here, so each rank can report exactly what it saw."""

    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.layer = nn.Linear(3, 1)
        self.seen: list[int] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen += y.tolist()
        return self.layer(x.mean((2, 3))).sum()

    def on_train_end(self) -> None:
        Path(self.out_dir, f"rank{self.global_rank}.txt").write_text(" ".join(map(str, self.seen)))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def main(npz: str, out_dir: str, backend: str, denoiser: str = "") -> None:
    purify = dict(purify=True, denoiser=denoiser, t_star=20, purify_steps=1) if denoiser else {}
    dm = EclipseDataModule(train=f"npz:{npz}", batch_size=16, backend=backend, cache_dir=str(Path(out_dir) / "cache"),
                           num_workers=1, **purify)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(RecordIndices(out_dir), datamodule=dm)
    torch.distributed.destroy_process_group()  # else gloo's threads can abort the exit (status -6)


if __name__ == "__main__":
    main(*sys.argv[1:5])

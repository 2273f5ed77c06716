"""Run by tests/defenses/test_epic.py: a 2-process CPU DDP (gloo) fit with EpicCallback. Each rank writes
OUT_DIR/rank{R}.json: the example indices it trained on per epoch, its final sampler mask and the
callback's history. The model differs between ranks only if the ranks' data differ, so a mask that
is not synchronised would show up as different masks or overlapping shards."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.defenses.epic import EpicSampler, EpicSchedule
from eclipse_loader.defenses.epic_callback import EpicCallback

N = 61  # odd: the two shards need one wrapped-around index


class RecordIndices(pl.LightningModule):
    def __init__(self, out_dir: str) -> None:
        super().__init__()
        self.out_dir = out_dir
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
        self.seen: dict[int, list[int]] = {}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y, index = batch
        self.seen.setdefault(self.current_epoch, []).extend(index.tolist())
        return torch.nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(out_dir: str) -> None:
    rng = np.random.default_rng(0)
    data = LabelledImages(rng.integers(0, 256, (N, 8, 8, 3), dtype=np.uint8), rng.integers(0, 3, N), 3)
    x = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    dataset = torch.utils.data.TensorDataset(x, torch.from_numpy(data.labels), torch.arange(N))
    sampler = EpicSampler(N, seed=0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, sampler=sampler)
    callback = EpicCallback(data, sampler, EpicSchedule(subset_size=0.5, warmup=1, period=1, stop_after=3))
    module = RecordIndices(out_dir)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=4, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         use_distributed_sampler=False, callbacks=[callback])
    trainer.fit(module, loader)
    Path(out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps({
        "seen": module.seen, "active": sampler.active.tolist(), "history": callback.history}))
    torch.distributed.destroy_process_group()  # else gloo's threads can abort the exit (status -6)


if __name__ == "__main__":
    main(sys.argv[1])

"""EclipseDataModule under all four Trainer entry points (fit, validate, test, predict), both backends.

Lightning runs validate/test/predict under ``torch.inference_mode()``; FFCV allocated its buffers
there and its worker thread then died on "Inplace update to inference tensor outside InferenceMode"
while the main thread waited forever (issue 14, item 4).
"""
from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from eclipse_loader import EclipseDataModule
from eclipse_loader.data.embedded import load_embedded

from ..conftest import requires_ffcv

BACKENDS = [pytest.param("ffcv", marks=requires_ffcv), "torch"]


class Tiny(pl.LightningModule):
    """Records the batches each stage sees."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 10)
        self.seen: dict[str, list[int]] = {"train": [], "val": [], "test": []}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x.mean((2, 3)))

    def _check(self, batch, stage: str) -> torch.Tensor:
        x, y = batch
        assert x.shape[1:] == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
        self.seen[stage].append(len(y))
        return nn.functional.cross_entropy(self(x), y)

    def training_step(self, batch, batch_idx):
        return self._check(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self._check(batch, "val"))

    def test_step(self, batch, batch_idx):
        self.log("test_loss", self._check(batch, "test"))

    def predict_step(self, batch, batch_idx):
        return batch[1]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _datamodule(tmp_path, backend: str) -> EclipseDataModule:
    data = load_embedded("test")
    pair = (data.images[:48], data.labels[:48])
    return EclipseDataModule.from_arrays(train=pair, val=pair, test=pair, predict=pair, num_classes=10, batch_size=16,
                                         backend=backend, num_workers=1, cache_dir=str(tmp_path / "cache"))


def _trainer() -> pl.Trainer:
    return pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=2, limit_test_batches=2,
                      limit_predict_batches=2, num_sanity_val_steps=0, accelerator="cpu", logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry", ["fit", "validate", "test", "predict"])
def test_every_trainer_entry_point_runs(tmp_path, backend, entry):
    dm, model = _datamodule(tmp_path, backend), Tiny()
    result = getattr(_trainer(), entry)(model, datamodule=dm)
    if entry == "fit":
        assert model.seen["train"] == [16, 16] and model.seen["val"] == [16, 16]
    elif entry == "predict":  # plain, stored order: the first two batches' labels, exactly
        expected = torch.from_numpy(load_embedded("test").labels[:32]).long()
        assert torch.equal(torch.cat(result), expected)
    else:
        stage = "val" if entry == "validate" else "test"
        assert model.seen[stage] == [16, 16]
        assert set(result[0]) == {f"{stage}_loss"}


def test_predict_dataloader_without_predict_data_is_empty():
    dm = EclipseDataModule(train="embedded:train", backend="torch")
    assert dm.predict_dataloader() == []

"""Lightning callbacks and loggers of denoiser training: checkpoints, the CSV loss log, loss lines."""
from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any, Optional

import lightning as L

from ..denoiser.resume import CHECKPOINT_DIR, LAST_CHECKPOINT


class StepTimer(L.Callback):
    """Adds this start's training time to the module's total; prints the loss when there is no bar."""

    def __init__(self, print_every: int) -> None:
        self.print_every, self._start = print_every, 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._start = time.perf_counter()
        self._base = pl_module.train_seconds
        if trainer.global_step and trainer.is_global_zero:
            print(f"resuming from step {trainer.global_step}", flush=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        pl_module.train_seconds = self._base + time.perf_counter() - self._start
        step = trainer.global_step
        if self.print_every and trainer.is_global_zero and (step % self.print_every == 0 or step == trainer.max_steps):
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            print(f"step {step}/{trainer.max_steps}: loss {float(loss):.5f}", flush=True)


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM Lightning stops after the step in progress; save that state, so a rerun resumes there.

    (Every DDP rank gets here: Lightning shares the SIGTERM flag across ranks before stopping.)
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        if isinstance(exception, SIGTERMException) and trainer.global_step > 0:
            trainer.save_checkpoint(self.path, weights_only=False)


def checkpoints_and_logs(work: Optional[Path], every: int, log_every: int) -> tuple[list[L.Callback], list[Any]]:
    """The checkpoint callbacks and the loggers (CSV; TensorBoard when installed) of a work dir."""
    if work is None:
        return [], []
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    saver = ModelCheckpoint(dirpath=work / CHECKPOINT_DIR, filename="step{step}", auto_insert_metric_name=False,
                            every_n_train_steps=every or None, save_top_k=0, save_last=True)
    loggers: list[Any] = [CSVLogger(work, name="logs", flush_logs_every_n_steps=log_every)]
    if importlib.util.find_spec("tensorboard") is not None:  # optional
        loggers.append(TensorBoardLogger(work, name="tensorboard"))
    return [saver, CheckpointOnSigterm(work / CHECKPOINT_DIR / LAST_CHECKPOINT)], loggers

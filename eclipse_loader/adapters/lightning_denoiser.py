"""Train the sparse-set denoiser with Lightning: eps-MSE, EMA weights, optional t <= t_max.

With a ``work_dir`` (the ``train-denoiser`` command's default: ``OUTPUT.train`` beside the output,
`eclipse_loader.denoiser.resume`), checkpoints are written every ``checkpoint_every`` steps and at
the end, and rerunning the same job resumes from the last one (step counter, optimiser, EMA weights,
loss history; the noise stream is reseeded from the step). The loss is logged there as CSV
(``WORK/logs/version_N/metrics.csv``, one version per start). Lightning's ``accelerator``,
``devices``, ``strategy`` and ``num_nodes`` choose the hardware (DDP on ``strategy="ddp"``).

The objective itself (loss, seeds, checks) is framework-free: `eclipse_loader.denoiser.objective`.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import lightning as L
import torch
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset

from ..data.images import LabelledImages
from ..data.pixels import to_model_range  # the same [-1, 1] scaling the purifier feeds the U-Net
from ..denoiser.io import save_denoiser
from ..denoiser.objective import TrainingInterrupted, check_t_max, check_training_request, denoising_loss, noise_seed
from ..denoiser.presets import NUM_TRAIN_TIMESTEPS, build_scheduler
from ..denoiser.resume import CHECKPOINT_DIR, LAST_CHECKPOINT, open_training_work_dir
from .lightning_denoiser_callbacks import StepTimer, checkpoints_and_logs
from .process_group import release_started_process_group

__all__ = ["DenoiserModule", "TrainingInterrupted", "train_denoiser"]

PathLike = Union[str, os.PathLike]


class DenoiserModule(L.LightningModule):
    """eps-prediction diffusion training of a `UNet2DModel` with an EMA copy of its weights.

    Timesteps are drawn uniformly from ``[0, t_max]`` (``t_max=None``: all ``[0, T)``); noise and
    timesteps come from a generator seeded with ``seed``, not from torch's global RNG.
    """

    def __init__(
        self,
        unet_kwargs: dict[str, Any],
        *,
        lr: float = 2e-4,
        ema_decay: float = 0.9999,
        t_max: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_t_max(t_max)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.unet = UNet2DModel(**unet_kwargs)
        scheduler = build_scheduler()
        self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.clone(), persistent=False)
        self.t_high = NUM_TRAIN_TIMESTEPS if t_max is None else int(t_max) + 1
        self.ema: Optional[EMAModel] = None
        self._gen = torch.Generator().manual_seed(int(seed) + 1)
        self.loss_history: list[tuple[int, float]] = []
        self.train_seconds = 0.0  # over every start of this job (restored from checkpoints)
        self._ema_state: Optional[dict[str, Any]] = None

    def on_fit_start(self) -> None:
        if self.ema is None:
            self.ema = EMAModel(self.unet.parameters(), decay=self.hparams.ema_decay)
        self._restore_ema()
        self.ema.to(self.device)

    def on_train_start(self) -> None:
        # after Lightning restored the step counter: the noise stream of (seed, rank, step), so a
        # resumed run does not replay the draws of the steps it already trained on
        self._restore_ema()
        self._gen.manual_seed(noise_seed(self.hparams.seed, self.global_rank, self.global_step))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["denoiser_state"] = {
            "ema": None if self.ema is None else self.ema.state_dict(),
            "loss_history": [list(item) for item in self.loss_history],
            "train_seconds": float(self.train_seconds),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("denoiser_state", {})
        self._ema_state = state.get("ema")
        self.loss_history = [(int(step), float(loss)) for step, loss in state.get("loss_history", [])]
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if self.ema is not None:
            self._restore_ema()

    def _restore_ema(self) -> None:
        if self._ema_state is not None and self.ema is not None:
            self.ema.load_state_dict(self._ema_state)
            self._ema_state = None

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = denoising_loss(self.unet, self.alphas_cumprod, batch[0], self._gen, self.t_high)
        self.log("loss", loss, prog_bar=True)
        if self.global_step % 25 == 0:
            self.loss_history.append((int(self.global_step), float(loss.detach())))
        return loss

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        assert self.ema is not None
        self.ema.step(self.unet.parameters())  # here, so a checkpoint taken after this step includes it

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    def ema_unet(self) -> UNet2DModel:
        """A copy of the U-Net holding the EMA weights (on CPU)."""
        unet = copy.deepcopy(self.unet).cpu()
        if self.ema is not None:
            self.ema.to("cpu")
            self.ema.copy_to(unet.parameters())
        return unet.eval()


@release_started_process_group()  # after the last barrier: the process exits cleanly
def train_denoiser(
    data: LabelledImages,
    preset: str,
    out_dir: PathLike,
    *,
    max_steps: int,
    batch_size: int = 64,
    lr: float = 2e-4,
    ema_decay: float = 0.9999,
    t_max: Optional[int] = None,
    seed: int = 0,
    accelerator: str = "auto",
    devices: Union[int, str] = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    progress: bool = True,
    metadata: Optional[dict[str, Any]] = None,
    work_dir: Optional[PathLike] = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    log_every: int = 25,
    callbacks: Sequence[L.Callback] = (),
) -> Path:
    """Train a denoiser on ``data`` (the sparse clean set) and save its EMA weights to ``out_dir``.

    Args:
        data: clean training images (uint8 NHWC; labels are ignored).
        preset: ``"paper"``, ``"small"`` or ``"tiny"`` (see `eclipse_loader.denoiser.presets`).
        out_dir: directory written in diffusers format (see `eclipse_loader.denoiser.io`).
        max_steps: optimizer steps.
        batch_size: images per step (capped at ``len(data)``).
        lr: AdamW learning rate (weight decay 0, as in improved-diffusion).
        ema_decay: EMA decay (paper 0.9999; diffusers' warm-up ``(1+s)/(10+s)`` applies early on).
        t_max: if given, train only on timesteps ``t <= t_max`` (purification uses ``t < t*``).
        seed: seeds weight init, data order, noise and timesteps.
        accelerator: Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``).
        devices: Lightning devices per node (an int, ``"auto"``, or a list string such as ``"0,1"``).
        strategy: Lightning strategy (``"auto"``, ``"ddp"``, ...); with DDP, ``batch_size`` is per device.
        num_nodes: machines (multi-node DDP; the work directory must be on a shared file system).
        progress: show Lightning's progress bar (without it, the loss is printed every ``log_every`` steps).
        metadata: extra JSON facts stored in ``denoiser.json`` (e.g. sparse-set indices).
        work_dir: checkpoints, ``job.json`` and the CSV loss log (e.g. `default_work_dir` of
            ``out_dir``); a rerun of the same job there resumes from its last checkpoint. None: no
            checkpoints and no log files.
        checkpoint_every: steps between checkpoints (0: only at the end; needs ``work_dir``).
        resume: False: start afresh even if ``work_dir`` holds a checkpoint of this job.
        log_every: steps between loss rows in the CSV log (and printed lines without ``progress``).
        callbacks: extra Lightning callbacks.

    Returns:
        ``out_dir`` as a `Path`.
    """
    unet_kwargs = check_training_request(data, preset, max_steps, t_max, checkpoint_every, log_every)
    image_size = data.image_shape[0]
    module = DenoiserModule(unet_kwargs, lr=lr, ema_decay=ema_decay, t_max=t_max, seed=seed)
    batch_size = min(int(batch_size), len(data))
    checkpoint, work = None, None if work_dir is None else Path(work_dir)
    if work is not None:
        job = {"data_sha256": data.fingerprint(), "preset": preset, "image_size": image_size,
               "batch_size": batch_size, "lr": lr, "ema_decay": ema_decay, "t_max": t_max, "seed": seed}
        checkpoint = open_training_work_dir(work, job, resume=resume)
    loader = DataLoader(
        TensorDataset(to_model_range(data.images)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(int(seed) + 2),
    )
    savers, loggers = checkpoints_and_logs(work, int(checkpoint_every), int(log_every))
    trainer = L.Trainer(
        max_steps=int(max_steps),
        accelerator=accelerator,
        devices=devices,
        strategy=strategy,
        num_nodes=num_nodes,
        logger=loggers or False,
        enable_checkpointing=bool(savers),
        callbacks=[*savers, StepTimer(0 if progress else int(log_every)), *callbacks],
        enable_progress_bar=progress,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        log_every_n_steps=int(log_every),
    )
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        trainer.fit(module, loader, ckpt_path=checkpoint, weights_only=True)
    except SIGTERMException:  # Lightning's SystemExit(0) after the step in progress: not a success
        saved = f"; its state is saved in {work}: rerun to resume" if work is not None else ""
        raise TrainingInterrupted(f"training stopped by SIGTERM after step {trainer.global_step}{saved}") from None
    if work is not None:  # the end state, so a rerun of a finished job has nothing to redo
        trainer.save_checkpoint(work / CHECKPOINT_DIR / LAST_CHECKPOINT, weights_only=False)
    if not trainer.is_global_zero:
        trainer.strategy.barrier()  # return once rank zero has written the denoiser
        return Path(out_dir)
    info = {
        "preset": preset,
        "max_steps": int(max_steps),
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "t_max": t_max,
        "seed": seed,
        "num_train_images": len(data),
        "train_seconds": round(module.train_seconds, 3),
        "trained_steps": int(trainer.global_step),
        "work_dir": None if work is None else str(work),
        "devices": int(trainer.world_size),
        "loss_history": module.loss_history,
        "objective": "eps-MSE, fixed variance (fixed_small); paper: learned-range L_hybrid",
        **(metadata or {}),
    }
    out = save_denoiser(module.ema_unet(), build_scheduler(), out_dir, info)
    trainer.strategy.barrier()
    return out

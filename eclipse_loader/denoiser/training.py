"""Train the sparse-set denoiser with Lightning: eps-MSE, EMA weights, optional t <= t_max.

This is the only module of the denoiser package that imports Lightning.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any, Optional, Union

import lightning as L
import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader, TensorDataset

from ..data.images import LabelledImages
from ..purify.purifier import to_model_range  # the same [-1, 1] scaling the purifier feeds the U-Net
from .io import save_denoiser
from .presets import NUM_TRAIN_TIMESTEPS, build_scheduler, build_unet, get_preset

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

    def on_fit_start(self) -> None:
        if self.ema is None:
            self.ema = EMAModel(self.unet.parameters(), decay=self.hparams.ema_decay)
        self.ema.to(self.device)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x0 = batch[0]
        n = x0.shape[0]
        # 1. draw noise and timesteps from our own generator (CPU, so runs match across devices)
        noise = torch.randn(x0.shape, generator=self._gen).to(x0.device)
        t = torch.randint(0, self.t_high, (n,), generator=self._gen).to(x0.device)
        # 2. forward process in closed form: x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        abar = self.alphas_cumprod[t].view(n, 1, 1, 1)
        x_t = abar.sqrt() * x0 + (1.0 - abar).sqrt() * noise
        # 3. eps-MSE (fixed-variance simplification of the paper's L_hybrid)
        loss = F.mse_loss(self.unet(x_t, t).sample, noise)
        self.log("loss", loss, prog_bar=True)
        if self.global_step % 25 == 0:
            self.loss_history.append((int(self.global_step), float(loss.detach())))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        assert self.ema is not None
        self.ema.step(self.unet.parameters())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.unet.parameters(), lr=self.hparams.lr, weight_decay=0.0)

    def ema_unet(self) -> UNet2DModel:
        """A copy of the U-Net holding the EMA weights (on CPU)."""
        unet = copy.deepcopy(self.unet).cpu()
        if self.ema is not None:
            self.ema.to("cpu")
            self.ema.copy_to(unet.parameters())
        return unet.eval()


def check_t_max(t_max: Optional[int]) -> None:
    """Raise ValueError unless ``t_max`` is None or an int in ``[0, T)``."""
    if t_max is not None and (int(t_max) != t_max or not 0 <= t_max < NUM_TRAIN_TIMESTEPS):
        raise ValueError(f"t_max must be None or an integer in [0, {NUM_TRAIN_TIMESTEPS}), got {t_max!r}")


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
    progress: bool = True,
    metadata: Optional[dict[str, Any]] = None,
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
        progress: show Lightning's progress bar.
        metadata: extra JSON facts stored in ``denoiser.json`` (e.g. sparse-set indices).

    Returns:
        ``out_dir`` as a `Path`.
    """
    get_preset(preset)
    check_t_max(t_max)
    if int(max_steps) != max_steps or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    if len(data) == 0:
        raise ValueError("cannot train a denoiser on an empty dataset")
    image_size = data.image_shape[0]
    if data.image_shape[0] != data.image_shape[1]:
        raise ValueError(f"images must be square, got {data.image_shape}")
    unet_kwargs = build_unet(preset, image_size).config
    unet_kwargs = {k: v for k, v in dict(unet_kwargs).items() if not k.startswith("_")}
    module = DenoiserModule(unet_kwargs, lr=lr, ema_decay=ema_decay, t_max=t_max, seed=seed)
    batch_size = min(int(batch_size), len(data))
    loader = DataLoader(
        TensorDataset(to_model_range(data.images)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(int(seed) + 2),
    )
    trainer = L.Trainer(
        max_steps=int(max_steps),
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        log_every_n_steps=25,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    seconds = time.perf_counter() - start
    info = {
        "preset": preset,
        "max_steps": int(max_steps),
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema_decay,
        "t_max": t_max,
        "seed": seed,
        "num_train_images": len(data),
        "train_seconds": round(seconds, 3),
        "loss_history": module.loss_history,
        "objective": "eps-MSE, fixed variance (fixed_small); paper: learned-range L_hybrid",
        **(metadata or {}),
    }
    return save_denoiser(module.ema_unet(), build_scheduler(), out_dir, info)

"""`EclipseDataModule`: purified data + on-the-fly corruption compensation as a Lightning DataModule.

* ``prepare_data`` (rank zero) turns each source into a beton in ``cache_dir`` (keyed by content hash,
  reused when present) and, with ``purify=True``, runs the ECLIPSE purification first.
* ``setup`` checks betons / loads arrays on every rank; ``*_dataloader`` builds the loaders
  (`eclipse_loader.adapters.lightning_loaders`): FFCV when it imports, else pure torch.
* Training loaders apply flip, translation and the compensation, redrawn every epoch; val, test and
  predict apply none. All four entry points (``fit``, ``validate``, ``test``, ``predict``) work on
  both backends. Iterators abandoned by Lightning are closed, so no loader threads leak.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import lightning.pytorch as pl
import numpy as np

from ..data.images import LabelledImages, as_labelled_images
from ..storage.sources import load_source
from ..loading.config import AugmentConfig
from .datamodule_purify import (PurifySteps, RepairThreshold, check_purify_steps, check_repair_threshold,
                                datamodule_purify_config, purified_file)
from .lightning_loaders import (Backend, build_loader, check_channels, check_image_sizes, datamodule_recipe,
                                ffcv_available, resolve_backend)

if TYPE_CHECKING:  # the purifier imports diffusers: only when purifying
    from ..purify.purifier import PurifyConfig

IN_MEMORY = "in-memory"  # the source name of splits given as arrays (`EclipseDataModule.from_arrays`)
SPLITS = ("train", "val", "test", "predict")
__all__ = ["EclipseDataModule", "ffcv_available"]


class EclipseDataModule(pl.LightningDataModule):
    """Loaders for training on (purified) data with ECLIPSE's corruption compensation.

    Args:
        train: training data: a ``.beton`` path (e.g. written by ``eclipse-loader purify``) or any
            source string of `eclipse_loader.data.load_source` (``npz:PATH``, ``cifar10:ROOT``,
            ``imagefolder:PATH``, ``embedded:train`` ...).
        val: validation data (same forms), or None for no validation loader.
        test: test data (same forms), or None.
        predict: data for ``Trainer.predict`` (same forms; plain, in stored order), or None.
        batch_size: training batch size per rank.
        eval_batch_size: val/test/predict batch size (defaults to ``batch_size``).
        num_workers: loader threads (FFCV) / processes (torch); clamped to the cores.
        seed: base seed of the order, augmentation and compensation draws.
        recipe: ``"default"``, ``"paper"`` or a recipe ``.json`` file (`eclipse_loader.recipes`,
            ``eclipse-loader tune``): the defaults of ``p_gray``, ``sigma``, ``t_star``,
            ``purify_steps`` and ``repair_threshold`` when those are None.
        compensate: apply the corruption compensation to training batches.
        p_gray: grayscale probability of the compensation (None: the recipe's).
        sigma: Gaussian noise std in [0, 1] units (None: the recipe's).
        flip: random horizontal flips in training.
        translate_padding: random translation of up to this many pixels in training (paper: crop with padding 4).
        mean: per-channel (R, G, B) mean in [0, 1] units to normalise with (None: images in [0, 1]).
        std: per-channel (R, G, B) std in [0, 1] units (with ``mean``).
        backend: ``"auto"`` (FFCV if importable), ``"ffcv"`` or ``"torch"``.
        cache_dir: where betons derived from non-beton sources (and purified data) are written.
        purify: purify ``train`` with the denoiser in ``denoiser`` during ``prepare_data`` (cached).
        denoiser: directory of a denoiser saved by ``eclipse-loader train-denoiser``.
        t_star: purification noise level as a diffusion timestep (None: the recipe's).
        purify_steps: reverse steps of the purification: a positive number, ``"full"`` (all t* of them) or
            None (the recipe's), as ``eclipse-loader purify --steps``.
        repair_threshold: grey levels of the outlier-pixel repair before purifying, ``"off"`` (no repair) or
            None (the recipe's), as ``eclipse-loader purify --repair-threshold N`` / ``--no-repair``.
        purify_sampler: ``"ddpm"`` (stochastic, the paper's) or ``"ddim"`` (deterministic).
        purify_batch_size: batch size of the purification pass.
        purify_device: device of the purification pass (``"cpu"``, ``"cuda"``).
    """

    def __init__(
        self,
        train: str,
        val: Optional[str] = None,
        test: Optional[str] = None,
        predict: Optional[str] = None,
        batch_size: int = 128,
        eval_batch_size: Optional[int] = None,
        num_workers: Optional[int] = None,
        seed: int = 0,
        recipe: str = "default",
        compensate: bool = True,
        p_gray: Optional[float] = None,
        sigma: Optional[float] = None,
        flip: bool = True,
        translate_padding: int = 4,
        mean: Optional[tuple[float, float, float]] = None,
        std: Optional[tuple[float, float, float]] = None,
        backend: Backend = "auto",
        cache_dir: str = "~/.cache/eclipse-loader",
        purify: bool = False,
        denoiser: Optional[str] = None,
        t_star: Optional[int] = None,
        purify_steps: PurifySteps = None,
        repair_threshold: RepairThreshold = None,
        purify_sampler: str = "ddpm",
        purify_batch_size: int = 256,
        purify_device: str = "cpu",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        check_purify_steps(purify_steps)
        check_repair_threshold(repair_threshold)
        if purify and not denoiser:
            raise ValueError("purify=True needs denoiser=DIR (train one with `eclipse-loader train-denoiser`)")
        self.recipe = datamodule_recipe(recipe, purify).with_overrides(t_star=t_star)
        p_gray = self.recipe.p_gray if p_gray is None else p_gray
        sigma = self.recipe.sigma if sigma is None else sigma
        self.augment = AugmentConfig(
            flip=flip, translate_padding=translate_padding, compensate=compensate, p_gray=p_gray, sigma=sigma,
            mean=check_channels("mean", mean), std=check_channels("std", std),
        )
        self.backend = resolve_backend(backend)
        self.cache_dir = Path(os.path.expanduser(cache_dir))
        self._sources = {"train": train, "val": val, "test": test, "predict": predict}
        self._data: dict[str, Union[Path, LabelledImages]] = {}
        self._in_memory: dict[str, LabelledImages] = {}
        self._loaders: dict[str, Any] = {}
        self._next_train_epoch = 0

    @classmethod
    def from_arrays(
        cls,
        train: tuple[np.ndarray, np.ndarray],
        val: Optional[tuple[np.ndarray, np.ndarray]] = None,
        test: Optional[tuple[np.ndarray, np.ndarray]] = None,
        predict: Optional[tuple[np.ndarray, np.ndarray]] = None,
        num_classes: Optional[int] = None,
        **kwargs: Any,
    ) -> "EclipseDataModule":
        """A DataModule over in-memory ``(images uint8 NHWC, labels)`` pairs (validated now).

        Other keyword arguments are those of the constructor. With the FFCV backend the arrays are
        written to betons in ``cache_dir`` (keyed by content hash) by ``prepare_data``.
        """
        splits = {"train": train, "val": val, "test": test, "predict": predict}
        datamodule = cls(**{k: None if v is None else IN_MEMORY for k, v in splits.items()}, **kwargs)
        for split, pair in splits.items():
            if pair is not None:
                datamodule._in_memory[split] = as_labelled_images(pair[0], pair[1], num_classes)
        return datamodule

    # ---- hooks -------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Write the betons the loaders need (rank zero only; reuses cached results)."""
        _, world, _ = self._world()
        for split, source in self._sources.items():
            purifying = split == "train" and self.hparams.purify
            if source is None or (purifying and world > 1):
                continue  # under DDP the purification runs in setup(), clear of the barrier timeout
            if self.backend == "ffcv" or purifying:
                # kept for this process's setup(), which then neither reloads nor re-hashes the source;
                # other processes compute their own in setup()
                self._data[split] = self._materialise(split, source, write=True)

    def setup(self, stage: Optional[str] = None) -> None:
        _, world, _ = self._world()
        for split, source in self._sources.items():
            if source is not None and split not in self._data:
                # under DDP the purification runs here, on local rank zero (see `_purified_beton`)
                purify_here = world > 1 and split == "train" and self.hparams.purify and self._local_rank() == 0
                self._data[split] = self._materialise(split, source, write=purify_here)
        check_image_sizes(self._data, self._sources)

    def train_dataloader(self) -> Any:
        previous = self._loaders.get("train")
        epoch = previous.next_epoch if previous is not None else self._next_train_epoch
        loader = self._make("train", self.hparams.batch_size, train=True)
        loader.set_epoch(epoch)  # a rebuilt loader carries on from the epoch the last one reached
        return loader

    def val_dataloader(self) -> Any:
        return self._make("val", self.hparams.eval_batch_size or self.hparams.batch_size, train=False)

    def test_dataloader(self) -> Any:
        return self._make("test", self.hparams.eval_batch_size or self.hparams.batch_size, train=False)

    def predict_dataloader(self) -> Any:
        return self._make("predict", self.hparams.eval_batch_size or self.hparams.batch_size, train=False)

    def on_exception(self, exception: BaseException) -> None:
        self.close()

    def teardown(self, stage: Optional[str] = None) -> None:
        self.close()

    def state_dict(self) -> dict[str, Any]:
        train = self._loaders.get("train")
        epoch = train.next_epoch if train is not None else self._next_train_epoch
        return {"epoch": int(epoch), "seed": int(self.hparams.seed)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict.get("seed", self.hparams.seed)) != self.hparams.seed:
            warnings.warn(f"checkpoint was made with seed {state_dict['seed']}, this DataModule uses "
                          f"{self.hparams.seed}: the order and compensation draws will differ", RuntimeWarning)
        self._next_train_epoch = int(state_dict.get("epoch", 0))
        if "train" in self._loaders:
            self._loaders["train"].set_epoch(self._next_train_epoch)

    def close(self) -> None:
        """Stop every loader's running epoch (no threads left behind)."""
        for loader in self._loaders.values():
            loader.close()

    # ---- internals ---------------------------------------------------------------------------
    def _materialise(self, split: str, source: str, write: bool) -> Union[Path, LabelledImages]:
        """The beton path (FFCV) or the in-memory data (torch) for one split."""
        if source.endswith(".beton") and not (split == "train" and self.hparams.purify):
            if not Path(source).exists():
                raise FileNotFoundError(f"{split} beton not found: {source}")
            from ..storage.beton import check_beton  # a damaged file: one error naming it, now

            return check_beton(source) if self.backend == "ffcv" else load_source(source)
        data = self._in_memory[split] if split in self._in_memory else load_source(source)
        if split == "train" and self.hparams.purify:
            data_path = self._purified_beton(data, write)
            return data_path if self.backend == "ffcv" else load_source(str(data_path))
        if self.backend == "torch":
            return data
        path = self.cache_dir / "betons" / f"{data.fingerprint()[:24]}.beton"
        if write and not path.exists():
            from ..storage.beton import write_beton

            write_beton(path, data, metadata={"source": source})
        elif not write and not path.exists():
            raise FileNotFoundError(f"{path} is missing: prepare_data() must run before setup()")
        return path

    def purify_config(self) -> PurifyConfig:
        """The purification settings: the recipe's, overridden by the explicit arguments."""
        hp = self.hparams
        return datamodule_purify_config(self.recipe, hp.purify_steps, hp.repair_threshold, hp.purify_sampler, hp.seed)

    def _purified_beton(self, data: LabelledImages, write: bool) -> Path:
        """The cached purified file of ``data`` (see `purified_file`); computed here when ``write``."""
        hp = self.hparams
        return purified_file(data, self.purify_config(), hp.denoiser, self.cache_dir, self.backend == "ffcv", write,
                             hp.purify_batch_size, hp.purify_device)

    def _local_rank(self) -> int:
        trainer = getattr(self, "trainer", None)
        return 0 if trainer is None else int(trainer.local_rank)

    def _world(self) -> tuple[int, int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1, 1
        local = getattr(trainer, "num_devices", 1) or 1
        return trainer.global_rank, trainer.world_size, local

    def _make(self, split: str, batch_size: int, train: bool) -> Any:
        if self._sources[split] is None:
            return []
        if split not in self._data:
            self.setup()
        previous = self._loaders.pop(split, None)
        if previous is not None:
            previous.close()
        rank, world, local = self._world()
        loader = build_loader(self.backend, self._data[split], batch_size, train=train, augment=self.augment,
                              seed=self.hparams.seed, num_workers=self.hparams.num_workers, rank=rank,
                              world_size=world, local_world_size=local)
        self._loaders[split] = loader
        return loader

    @property
    def num_classes(self) -> int:
        """Number of classes of the training data (after `setup`)."""
        data = self._data.get("train")
        if data is None:
            raise RuntimeError("call setup() first")
        if isinstance(data, LabelledImages):
            return data.num_classes
        from ..storage.beton import read_manifest

        classes = read_manifest(data).get("num_classes")
        return int(classes) if classes else int(load_source(str(data)).num_classes)


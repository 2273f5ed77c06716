"""Purification on many processes, GPUs and nodes: Lightning ``Trainer.predict`` writes shards, one step assembles.

This is the Lightning adapter around the framework-free `Purifier` and `shards` modules:

* `ShardBlocks` (DataModule): in ``setup`` global rank 0 alone plans the job (hashes the source and the
  denoiser for the cache key, writes the job manifest, lists the index blocks whose shard file is missing)
  and broadcasts the plan, so every rank agrees on the work even when a restart runs with another world
  size, and the other ranks read only the blocks they purify. Lightning's ``UnrepeatedDistributedSampler``
  (injected in predict mode) deals the blocks out without padding duplicates.
* `PurificationModule` (LightningModule): ``predict_step`` purifies one block in U-Net batches.
* `ShardWriter` (``BasePredictionWriter``): each rank writes the shards of its own blocks, then waits
  for the others at a barrier.
* `purify_distributed`: runs the above; global rank 0 then writes the output in index order
  (`eclipse_loader.purify.engine.write_purified`), refusing unless every index is present exactly once.

The shards, their manifest and the output writer are the single-process engine's
(`eclipse_loader.purify.engine`): sample ``i``'s noise depends only on ``(seed, i)``, so at equal batch
size the result is byte-identical to `purify_dataset`'s.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional, Sequence, Union

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from diffusers import DDPMScheduler

from ..data.images import LabelledImages
from ..denoiser.io import check_serves_t_star, denoiser_hash, load_denoiser
from ..output_files import output_lock, remove_stale_temporaries
from ..purify.engine import cache_key, check_outputs, is_up_to_date, purification_metadata, purify_block, write_purified
from ..purify.purifier import Purifier, PurifyConfig, resolve_schedule
from ..purify.shards import pending_blocks, prepare_job, save_shard
from ..purify.workdir import remove_job_files
from .process_group import release_started_process_group

PathLike = Union[str, os.PathLike]
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork")
# "full": purify the missing shards, then assemble; "shards_only": stop after the shards (assemble later);
# "assemble_only": start no Trainer, assemble the finished shards
Mode = Literal["full", "shards_only", "assemble_only"]
MODES = ("full", "shards_only", "assemble_only")
_log = logging.getLogger(__name__)


class _Blocks(Dataset):
    """Item ``k`` = the images of block ``blocks[k]`` (an empty block pads the list to the world size)."""

    def __init__(self, images: np.ndarray, blocks: Sequence[tuple[int, int]]) -> None:
        self.images, self.blocks = images, list(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, k: int) -> dict[str, Any]:
        start, stop = self.blocks[k]
        try:  # a lazily decoded source decodes here, in the DataLoader: its error goes to predict_step
            return {"start": start, "stop": stop, "images": self.images[start:stop]}
        except Exception as error:  # noqa: BLE001 - reported on every rank by ShardWriter.on_predict_end
            return {"start": start, "stop": stop, "images": None, "error": error}


def _single(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Collate for ``batch_size=1``: the one block itself (module level, so workers can pickle it)."""
    return items[0]


@dataclass(frozen=True)
class JobPlan:
    """What global rank 0 decides before any purification and broadcasts to every rank.

    Attributes:
        key: the job's cache key (`cache_key`).
        denoiser_sha: `denoiser_hash` of the denoiser directory.
        blocks: the ``(start, stop)`` index blocks still to purify.
        up_to_date: the output already holds ``key``: nothing is purified or written.
    """

    key: str
    denoiser_sha: str
    blocks: tuple[tuple[int, int], ...]
    up_to_date: bool = False


@dataclass(frozen=True)
class _PlanFailed:
    """Rank 0's planning error, broadcast so that every rank raises instead of waiting at a collective."""

    error: BaseException


class ShardBlocks(pl.LightningDataModule):
    """The blocks still to purify, planned by global rank 0 alone (`JobPlan`) and broadcast to all ranks.

    Args:
        images: the whole dataset's uint8 NHWC pixels (a memory map is read only where a rank's blocks lie).
        plan: called on global rank 0 only, in ``setup``; its result (or its exception) reaches every rank.
        num_workers: DataLoader workers per rank.
    """

    def __init__(self, images: np.ndarray, plan: Callable[[], JobPlan], num_workers: int = 0) -> None:
        super().__init__()
        self.images, self._plan, self.num_workers = images, plan, num_workers
        self.plan: Optional[JobPlan] = None
        self.blocks: list[tuple[int, int]] = []

    def setup(self, stage: str) -> None:
        if stage != "predict":
            raise ValueError(f"ShardBlocks only serves predict, got stage {stage!r}")
        trainer = self.trainer
        assert trainer is not None, "ShardBlocks must be used through Trainer.predict"
        plan: Union[JobPlan, _PlanFailed, None] = None
        if trainer.global_rank == 0:
            try:
                plan = self._plan()
            except Exception as error:  # noqa: BLE001 - re-raised on every rank below
                plan = _PlanFailed(error)
        plan = trainer.strategy.broadcast(plan, src=0)
        if isinstance(plan, _PlanFailed):
            raise plan.error
        assert isinstance(plan, JobPlan), f"rank 0 broadcast {plan!r}, not a JobPlan"
        self.plan = plan
        # every rank needs at least one item (UnrepeatedDistributedSampler asserts it): pad with empty blocks
        self.blocks = list(plan.blocks) + [(0, 0)] * max(0, trainer.world_size - len(plan.blocks))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # uint8 numpy stays on the host; the Purifier moves the float tensors itself

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(_Blocks(self.images, self.blocks), batch_size=1, shuffle=False, collate_fn=_single,
                          num_workers=self.num_workers)


class PurificationModule(pl.LightningModule):
    """``predict_step`` purifies one block with the denoiser in ``denoiser_dir``.

    Args:
        denoiser_dir: a directory written by `save_denoiser`.
        config: purification settings.
        batch_size: images per U-Net call (keep it equal to compare with another run byte for byte).
    """

    def __init__(self, denoiser_dir: PathLike, config: PurifyConfig, batch_size: int) -> None:
        super().__init__()
        unet, self._scheduler = load_denoiser(denoiser_dir, device="cpu")
        self.config, self.batch_size, self.denoiser_dir = config, int(batch_size), denoiser_dir
        self.t_star, self.timesteps = resolve_schedule(config, self._scheduler.alphas_cumprod)  # fails before the Trainer
        check_serves_t_star(denoiser_dir, self.t_star)
        self.unet = unet  # a submodule, so Lightning moves it to this rank's device
        self.purifier: Optional[Purifier] = None
        self.failure: Optional[BaseException] = None  # this rank's first error; ShardWriter raises it on every rank

    def on_predict_start(self) -> None:
        self.purifier = Purifier(self.unet, self._scheduler, self.config, device=self.device)
        self.failure = None

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> Optional[dict[str, np.ndarray]]:
        start, stop, images = int(batch["start"]), int(batch["stop"]), batch["images"]
        if stop == start or self.failure is not None:  # after a failure this rank only drains its blocks
            return None
        assert self.purifier is not None, "on_predict_start builds the purifier"
        try:
            if batch.get("error") is not None:
                raise batch["error"]
            purified = purify_block(self.purifier, images, start, self.batch_size, self.denoiser_dir)
        except Exception as error:  # noqa: BLE001 - raised on every rank at the end, so no rank waits forever
            self.failure = error
            return None
        return {"indices": np.arange(start, stop, dtype=np.int64), "images": purified}


class ShardWriter(BasePredictionWriter):
    """Writes each purified block of this rank as ``WORK/shard_<start>_<stop>.npz``, then meets the other ranks."""

    def __init__(self, work: PathLike) -> None:
        super().__init__(write_interval="batch")
        self.work = Path(work)

    def write_on_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, prediction: Any,
                           batch_indices: Optional[Sequence[int]], batch: Any, batch_idx: int,
                           dataloader_idx: int) -> None:
        if prediction is not None:
            save_shard(self.work, prediction["indices"], prediction["images"])

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # every rank learns of every rank's failure (a damaged file in one rank's blocks, NaN output ...) and
        # raises it, instead of the others waiting at a collective; then rank 0 assembles only after every shard exists
        own = getattr(pl_module, "failure", None)
        for rank in range(trainer.world_size):
            sent = trainer.strategy.broadcast(_portable(own) if trainer.global_rank == rank else None, src=rank)
            if sent is not None:
                raise own if own is not None else sent
        trainer.strategy.barrier("eclipse-shards-written")


def _portable(error: Optional[BaseException]) -> Optional[BaseException]:
    """``error`` as an object every rank can unpickle: itself when it survives pickling with its type and
    message, else a RuntimeError carrying both as text."""
    if error is None:
        return None
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error) and str(copy) == str(error):
            return error
    except Exception:  # noqa: BLE001 - unpicklable: send its text instead
        pass
    return RuntimeError(f"{type(error).__name__}: {error}")


def purify_distributed(
    data: LabelledImages,
    denoiser_dir: PathLike,
    out_beton: PathLike,
    *,
    config: PurifyConfig = PurifyConfig(),
    work_dir: Optional[PathLike] = None,
    batch_size: int = 256,
    shard_size: Optional[int] = None,
    accelerator: str = "auto",
    devices: Union[int, str] = "auto",
    num_nodes: int = 1,
    strategy: str = "ddp",
    num_workers: int = 0,
    progress: bool = True,
    also_npz: Optional[PathLike] = None,
    keep_work: bool = False,
    mode: Mode = "full",
) -> Optional[Path]:
    """`purify_dataset` on ``devices x num_nodes`` processes via Lightning ``Trainer.predict``.

    Every rank (each process of a ``torchrun``/``srun`` launch, or the ones Lightning starts) calls
    this with the same arguments. Ranks write shards of fixed index blocks into ``work_dir``; a rerun
    with the same inputs, at any world size, computes only the missing blocks. Global rank 0 then
    writes ``out_beton`` (byte-identical to `purify_dataset`'s at equal batch size) and deletes the shards unless
    ``keep_work``. Only global rank 0 hashes the source and the denoiser (inside the Trainer, then it
    broadcasts a `JobPlan`): the other ranks read only the blocks they purify, so a memory-mapped source
    costs each rank its share. If ``out_beton`` already holds this job's cache key, no block is purified
    and nothing is written (the Trainer still starts, so that every rank learns it).

    Args:
        data, denoiser_dir, out_beton, config, batch_size, progress, also_npz, keep_work: as in `purify_dataset`.
        work_dir: the shard directory (default ``<out_beton>.shards``).
        shard_size: images per shard file (default ``batch_size``; fixed by the first run).
        accelerator, devices, num_nodes: passed to ``lightning.Trainer``.
        strategy: one of ``STRATEGIES`` (``ddp`` for ``torchrun``/SLURM launches).
        num_workers: DataLoader workers per rank.
        mode: ``"full"`` (purify what is missing, then write the beton), ``"shards_only"`` (write the
            shards, assemble later) or ``"assemble_only"`` (start no Trainer; assemble the finished
            shards, failing with what is missing).

    Returns:
        The beton path on the process that wrote or found it; ``None`` on other ranks and without assembly.
    """
    for name, value in (("batch_size", batch_size), ("num_nodes", num_nodes), ("shard_size", shard_size or 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if len(data) == 0:
        raise ValueError("nothing to purify: the dataset is empty")
    out_beton = check_outputs(out_beton, data, also_npz) if mode != "shards_only" else Path(out_beton)
    work = Path(work_dir) if work_dir is not None else out_beton.with_name(out_beton.name + ".shards")
    if mode == "assemble_only":  # one process; the schedule alone fills the manifest: no U-Net is loaded
        denoiser_sha = denoiser_hash(denoiser_dir)
        key = cache_key(data, config, denoiser_dir, denoiser_sha)
        if is_up_to_date(out_beton, key, also_npz):
            return out_beton
        scheduler = DDPMScheduler.from_pretrained(Path(denoiser_dir) / "scheduler")
        metadata = purification_metadata(config, *resolve_schedule(config, scheduler.alphas_cumprod),
                                         denoiser_dir, denoiser_sha, key)
        return _assemble(work, data, out_beton, key, metadata, progress, also_npz, keep_work, work_dir is None)
    outputs = (out_beton,) + (() if also_npz is None else (Path(also_npz),))

    def plan() -> JobPlan:  # global rank 0 only: the other ranks never hash the whole source
        denoiser_sha = denoiser_hash(denoiser_dir)
        key = cache_key(data, config, denoiser_dir, denoiser_sha)
        if is_up_to_date(out_beton, key, also_npz):
            return JobPlan(key, denoiser_sha, (), up_to_date=True)
        shards = prepare_job(work, key, len(data), int(shard_size or batch_size), outputs)
        todo = pending_blocks(work, len(data), shards, tuple(data.image_shape))
        done = len(data) - sum(b - a for a, b in todo)
        if done:
            _log.info("resuming: %d of %d images already in shards under %s", done, len(data), work)
        return JobPlan(key, denoiser_sha, tuple(todo))

    module = PurificationModule(denoiser_dir, config, batch_size)
    blocks = ShardBlocks(data.images, plan, num_workers)
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                         callbacks=[ShardWriter(work)], logger=False, enable_checkpointing=False,
                         enable_model_summary=False, enable_progress_bar=progress)
    with release_started_process_group():  # ShardWriter's barrier was the last collective
        trainer.predict(module, datamodule=blocks, return_predictions=False)
    job = blocks.plan
    assert job is not None, "ShardBlocks.setup ran"
    if trainer.global_rank != 0:
        return None
    if job.up_to_date:
        return out_beton
    if mode == "shards_only":
        return None
    metadata = purification_metadata(config, module.t_star, module.timesteps, denoiser_dir, job.denoiser_sha, job.key)
    return _assemble(work, data, out_beton, job.key, metadata, progress, also_npz, keep_work, work_dir is None)


def _assemble(work: Path, data: LabelledImages, out_beton: Path, key: str, metadata: dict[str, Any], progress: bool,
              also_npz: Optional[PathLike], keep_work: bool, default_work: bool) -> Path:
    with output_lock(out_beton):
        remove_stale_temporaries(out_beton)
        write_purified(work, data, out_beton, key, metadata, also_npz=also_npz, progress=progress)
        if not keep_work:
            remove_job_files(work, remove_dir=default_work)
    return out_beton

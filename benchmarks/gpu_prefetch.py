"""The gpu-full run's CPU work, done beside the GPU instead of in its way.

At full scale the model-free poisons (AR alone is ~100 s of one core for 50k images), JPEG q=10 and
outlier repair (each ~1-2 core-minutes per 50k-image set) would keep the GPU idle. `Prefetcher` runs
them in spawned worker processes while the main process trains victims, writing the same cache files
the harness reads (``poisons/<attack>.npz``, ``offline/<attack>--<steps>.npz``); `chunked` splits a step
over threads when the main process needs a result no worker made. A worker's exception reaches the
caller when it waits for that result.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from eclipse_loader.data.images import LabelledImages

MODEL_FREE = ("ar", "lsp", "ops", "cuda", "classwise-noise")
PREFETCHED_STEPS = (("jpeg10",), ("repair-outliers",))


def craft_model_free(attack: str, data: LabelledImages, seed: int) -> LabelledImages:
    from eclipse_loader import poisons

    make = {"ar": poisons.autoregressive, "lsp": poisons.lsp, "ops": poisons.one_pixel_shortcut,
            "cuda": poisons.convolution_based, "classwise-noise": poisons.classwise_noise}[attack]
    return make(data, seed=seed)


def apply_steps(steps: tuple[str, ...], data: LabelledImages) -> LabelledImages:
    """The named offline steps (no purification) in order."""
    from eclipse_loader.evaluation.defense_registry import offline_steps

    functions = offline_steps()
    for name in steps:
        data = functions[name](data)
    return data


def chunked(fn: Callable[[LabelledImages], LabelledImages], data: LabelledImages,
            workers: Optional[int] = None) -> LabelledImages:
    """``fn`` (a per-image step: JPEG, grayscale, outlier repair) over ``workers`` contiguous chunks in threads."""
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(data) // 256 or 1))
    if workers == 1:
        return fn(data)
    parts = np.array_split(np.arange(len(data)), workers)
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(lambda idx: fn(data.subset(idx)), parts))
    return LabelledImages(np.concatenate([d.images for d in done]), data.labels.copy(), data.num_classes)


def save_npz(path: Path, data: LabelledImages) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, images=data.images, labels=data.labels)
    os.replace(tmp, path)


def load_npz(path: Path) -> LabelledImages:
    with np.load(path, allow_pickle=False) as z:
        return LabelledImages(z["images"], z["labels"].astype(np.int64), 10)


def offline_path(workdir: Path, attack: str, steps: tuple[str, ...]) -> Path:
    return workdir / "offline" / f"{attack}--{'+'.join(steps)}.npz"


def _worker(attack: str, source: Path, craft: bool, seed: int, workdir: Path,
            steps: tuple[tuple[str, ...], ...]) -> dict[str, float]:
    """Craft ``attack`` from the clean set in ``source`` (``craft``; else ``source`` holds the poisoned set),
    write it to the poison cache, then write its offline sets (each file atomically, as soon as it is done)."""
    import torch

    torch.set_num_threads(1)
    timings, start = {}, time.perf_counter()
    target = workdir / "poisons" / f"{attack}.npz"
    if craft and target.is_file():
        poisoned = load_npz(target)
    elif craft:
        poisoned = craft_model_free(attack, load_npz(source), seed)
        save_npz(target, poisoned)
        timings[f"craft_{attack}_s"] = round(time.perf_counter() - start, 1)
    else:
        poisoned = load_npz(source)
    for chain in steps:
        path = offline_path(workdir, attack, chain)
        if not path.is_file():
            start = time.perf_counter()
            save_npz(path, apply_steps(chain, poisoned))
            timings[f"offline_{attack}--{'+'.join(chain)}_s"] = round(time.perf_counter() - start, 1)
    return timings


class Prefetcher:
    """Worker processes that craft model-free poisons and apply offline steps ahead of the main loop."""

    def __init__(self, workdir: Path, seed: int, workers: int) -> None:
        self.workdir, self.seed = workdir, seed
        self.pool = ProcessPoolExecutor(max(1, workers), mp_context=get_context("spawn"))
        self.futures: dict[str, Future] = {}
        self.timings: dict[str, float] = {}

    def submit(self, attack: str, source: Path, craft: bool) -> None:
        """Queue ``attack`` (see `_worker`); a second submit of the same attack is ignored."""
        if attack not in self.futures:
            self.futures[attack] = self.pool.submit(_worker, attack, source, craft, self.seed, self.workdir,
                                                    PREFETCHED_STEPS)

    def wait_for(self, attack: str, path: Path) -> None:
        """Block until ``path`` exists or ``attack``'s work has ended; a worker's exception is raised here."""
        future = self.futures.get(attack)
        while future is not None and not path.is_file() and not future.done():
            time.sleep(0.2)
        if future is not None and future.done():
            self.timings.update(future.result())

    def close(self) -> None:
        """Cancel queued work and stop this pool's worker processes (a run cut by its budget must exit now)."""
        processes = list(getattr(self.pool, "_processes", {}).values())
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()

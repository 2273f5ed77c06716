"""The loaders the ``loader`` and ``loader_memory`` stages time: torchvision ``DataLoader``, FFCV with and
without compensation, the batched torch loader; each yields float32 NCHW batches in [0, 1]."""
from __future__ import annotations

import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from _common import load_cifar

from eclipse_loader.recipes import PAPER_RECIPE

LOADERS = ("torchvision_dataloader", "ffcv_plain", "ffcv_compensation", "torch_batched", "torch_batched_1thread")
PROFILE_LOADERS = ("torchvision_no_compensation", "ffcv_decode_only")
TIMING_ORDER = ["torchvision_dataloader", "torchvision_no_compensation", "ffcv_plain", "ffcv_compensation", "torch_batched",
                "torch_batched_1thread", "ffcv_decode_only"]
"""Warm-up order (torchvision first: its workers fork before any FFCV/numba thread exists); rotated per round."""


class ArrayDataset(torch.utils.data.Dataset):
    """uint8 HWC arrays + labels with a per-sample transform: the usual torchvision-style Dataset."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[index]), int(self.labels[index])


class TorchThreads:
    """Iterates ``loader`` with torch's intra-op thread count set to ``threads`` (restored after); on an
    oversubscribed machine OpenMP's spinning threads can make 2 threads slower than 1, so both are timed."""

    def __init__(self, loader: Any, threads: int) -> None:
        self.loader, self.threads = loader, threads

    def __iter__(self) -> Any:
        previous = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield from self.loader
        finally:
            torch.set_num_threads(previous)


def torchvision_transform(compensate: bool) -> Any:
    from torchvision.transforms import v2

    from eclipse_loader import CorruptionCompensation

    steps = [v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if compensate:
        steps.append(CorruptionCompensation(p_gray=PAPER_RECIPE.p_gray, sigma=PAPER_RECIPE.sigma))
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True)])


def build_loader(name: str, beton: str, images: np.ndarray, labels: np.ndarray, batch: int, workers: int, device: str) -> Any:
    """One of the benchmarked loaders; every one yields (float32 NCHW in [0, 1], labels)."""
    if name.startswith("torchvision"):
        dataset = ArrayDataset(images, labels, torchvision_transform(compensate=name == "torchvision_dataloader"))
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
            persistent_workers=workers > 0, pin_memory=device.startswith("cuda"),
        )
    from eclipse_loader.loading.config import AugmentConfig

    compensation = AugmentConfig(p_gray=PAPER_RECIPE.p_gray, sigma=PAPER_RECIPE.sigma)
    if name.startswith("torch_batched"):
        from eclipse_loader.data.images import as_labelled_images
        from eclipse_loader.loading.torch_loader import TorchEpochLoader

        loader = TorchEpochLoader(as_labelled_images(images, labels, 10), batch, augment=compensation, shuffle=True,
                                  drop_last=True, device=device)
        return TorchThreads(loader, 1 if name.endswith("_1thread") else workers)
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader

    augment = {
        "ffcv_decode_only": None,
        "ffcv_plain": AugmentConfig(compensate=False),
        "ffcv_compensation": compensation,
    }[name]
    return make_ffcv_loader(beton, batch, augment=augment, shuffle=True, drop_last=True, num_workers=workers, device=device)


def run_epoch(loader: Any, device: str) -> tuple[int, float]:
    """(images, seconds) of one full epoch; batches are moved to ``device`` if not already there."""
    count = 0
    start = time.perf_counter()
    for x, _ in loader:
        if x.device.type != torch.device(device).type:
            x = x.to(device, non_blocking=True)
        count += len(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return count, time.perf_counter() - start


def loader_timing(beton: str, samples: int, batch: int, workers: int, epochs: int, device: str, names: list[str]) -> dict[str, Any]:
    """All loaders in one process: warm-up epoch each, then ``epochs`` rounds in rotating order."""
    images, labels = load_cifar(samples)
    loaders = {name: build_loader(name, beton, images, labels, batch, workers, device) for name in names}
    warmup = {}
    for name, loader in loaders.items():
        warmup[name] = round(run_epoch(loader, device)[1], 2)
    rates: dict[str, list[float]] = {name: [] for name in names}
    rounds = []
    for r in range(epochs):
        order = names[r % len(names):] + names[: r % len(names)]
        record: dict[str, Any] = {"order": order, "load_avg_1min_start": round(os.getloadavg()[0], 2)}
        for name in order:
            count, seconds = run_epoch(loaders[name], device)
            rates[name].append(count / seconds)
            record[name] = round(count / seconds, 1)
        record["load_avg_1min_end"] = round(os.getloadavg()[0], 2)
        rounds.append(record)
        print(f"  loader round {r}: " + ", ".join(f"{n} {record[n]:.0f}" for n in names), flush=True)
    for loader in loaders.values():
        if hasattr(loader, "close"):
            loader.close()
    return {
        "epoch_images": count, "warmup_epoch_seconds": warmup, "rounds": rounds, "torch_threads": torch.get_num_threads(),
        "images_per_s_per_round": {n: [round(v, 1) for v in rates[n]] for n in names},
        "median_images_per_s": {n: round(statistics.median(rates[n]), 1) for n in names},
    }


def loader_alone(name: str, beton: str, samples: int, batch: int, workers: int, device: str) -> dict[str, Any]:
    """One loader alone, for its peak memory: one warm-up epoch and one more epoch. (No speed figure:
    the memory sampler thread takes the GIL, which slows FFCV's Python-side thread down.)"""
    images, labels = load_cifar(samples)
    loader = build_loader(name, beton, images, labels, batch, workers, device)
    run_epoch(loader, device)
    count, _ = run_epoch(loader, device)
    if hasattr(loader, "close"):
        loader.close()
    del loader  # shuts torch's persistent workers down, so RUSAGE_CHILDREN includes them
    import gc

    gc.collect()
    return {"loader": name, "epoch_images": count}


def write_cifar_beton(path: str, samples: int) -> dict[str, Any]:
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.storage.beton import write_beton

    images, labels = load_cifar(samples)
    start = time.perf_counter()
    write_beton(path, as_labelled_images(images, labels, 10), progress=False)
    return {"images": samples, "seconds": round(time.perf_counter() - start, 2)}

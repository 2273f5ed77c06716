"""Loader throughput: FFCV vs the torch fallback, with and without the compensation.

Writes CIFAR-10's training set (50,000 images) to a beton once, then times full epochs of each
loader configuration, excluding the first (JIT-compiling) epoch, and appends one JSON line per
configuration to benchmarks/results/loader_speed.jsonl. Timing claims are ratios within one run.

    .venv/bin/python benchmarks/bench_loader.py [--samples 50000] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader
from eclipse_loader.data.images import as_labelled_images
from eclipse_loader.loading.config import AugmentConfig, usable_cores
from eclipse_loader.loading.torch_loader import TorchEpochLoader
from eclipse_loader.storage.beton import write_beton

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"
OUT = Path(__file__).resolve().parent / "results" / "loader_speed.jsonl"


def time_epochs(loader, epochs: int) -> float:
    for _ in loader:  # warm-up epoch (numba JIT for FFCV)
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for x, _ in loader:
            count += len(x)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=50000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    with np.load(CIFAR) as d:
        data = as_labelled_images(d["train_x"][: args.samples], d["train_y"][: args.samples], 10)
    configs = {
        "no augmentation": None,
        "flip+translate": AugmentConfig(compensate=False),
        "flip+translate+compensation": AugmentConfig(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        beton = write_beton(Path(tmp) / "train.beton", data, progress=False)
        for name, augment in configs.items():
            for backend in ("ffcv", "torch"):
                if backend == "ffcv":
                    loader = make_ffcv_loader(beton, args.batch_size, augment=augment, shuffle=True, drop_last=True)
                else:
                    loader = TorchEpochLoader(data, args.batch_size, augment=augment, shuffle=True, drop_last=True)
                rate = time_epochs(loader, args.epochs)
                loader.close()
                row = {
                    "benchmark": "loader_speed", "backend": backend, "pipeline": name, "images_per_s": round(rate, 1),
                    "samples": args.samples, "batch_size": args.batch_size, "epochs_timed": args.epochs,
                    "cores": usable_cores(), "torch_threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
                    "command": "python " + " ".join(sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                print(json.dumps(row), flush=True)
                OUT.parent.mkdir(parents=True, exist_ok=True)
                with OUT.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

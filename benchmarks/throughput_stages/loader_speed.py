"""The ``loader_speed`` stage (formerly ``bench_loader.py``): FFCV vs the torch loader, with and without
augmentation and compensation.

Writes CIFAR-10's training set (``--loader-speed-samples`` images) to a beton once, then times full epochs
of each loader configuration, excluding the first (JIT-compiling) epoch, and appends one JSON line per
configuration to ``--loader-speed-out`` (default benchmarks/results/loader_speed.jsonl). Timing claims are
ratios within one run.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import RESULTS, append_jsonl, command_line, load_cifar, machine_info, time_epochs


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loader_speed stage (formerly bench_loader.py's options, prefixed)")
    group.add_argument("--loader-speed-samples", type=int, default=50000)
    group.add_argument("--loader-speed-epochs", type=int, default=2)
    group.add_argument("--loader-speed-batch-size", type=int, default=256)
    group.add_argument("--loader-speed-out", default=str(RESULTS / "loader_speed.jsonl"))


def run(args: argparse.Namespace) -> None:
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.loading.config import AugmentConfig
    from eclipse_loader.loading.torch_loader import TorchEpochLoader
    from eclipse_loader.storage.beton import write_beton

    samples, epochs, batch = args.loader_speed_samples, args.loader_speed_epochs, args.loader_speed_batch_size
    data = as_labelled_images(*load_cifar(samples), 10)
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
                    loader = make_ffcv_loader(beton, batch, augment=augment, shuffle=True, drop_last=True)
                else:
                    loader = TorchEpochLoader(data, batch, augment=augment, shuffle=True, drop_last=True)
                rate = time_epochs(loader, epochs)
                loader.close()
                row = {
                    "benchmark": "loader_speed", "backend": backend, "pipeline": name, "images_per_s": round(rate, 1),
                    "samples": samples, "batch_size": batch, "epochs_timed": epochs,
                    "machine": machine_info(), "command": command_line(),
                }
                append_jsonl(Path(args.loader_speed_out), row)

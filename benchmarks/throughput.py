"""Throughput of the defence: loader images/s, purification images/s, denoiser training s/step,
peak memory of each, and how purification and beton writing scale with the dataset size.

Writes ``benchmarks/results/throughput-<date>.json`` (rewritten after every stage, so an interrupted
run keeps what it finished). Every measured stage runs alone in a fresh spawned process (peak memory
per stage; no shared JIT or thread state). Speed claims are ratios taken inside one run: the loaders
are timed epoch by epoch in rotating order in one process, and each round's ratios are kept.

Stages (``--stages``, default all):

* ``loader``: CIFAR-10 train (``--loader-samples``), batch 256, ``--workers`` 2, random crop
  (translate, padding 4) + flip (+ compensation p_gray 0.4, sigma 0.05: the paper's, the heavier
  one), float output in [0, 1]: ``torchvision_dataloader`` (torch ``DataLoader`` over uint8 arrays
  with torchvision v2 transforms and our ``CorruptionCompensation``, what a user would write),
  ``ffcv_plain`` (our beton, FFCV, no compensation), ``ffcv_compensation`` (with the
  ``CompensateFFCV`` Operation) and ``torch_batched`` (``TorchEpochLoader``: the same augmentation
  and compensation on whole in-memory batches, ``--loader-device``); plus two reference pipelines
  for the profile (FFCV decode only; torchvision without compensation). ``--loaders`` picks a subset.
  One untimed warm-up epoch each (numba compile), then ``--epochs`` timed rounds in rotating order;
  the targets are medians of the per-round ratios.
* ``first_batch``: seconds from ``make_ffcv_loader`` to the first training batch (with compensation)
  in fresh processes sharing an empty numba cache directory: the first compiles, the next ones load.
* ``loader_memory``: each of the three loaders alone in its own process (1 warm-up + 1 epoch).
* ``loader_profile``: where the loader time goes: per-operation cost of the FFCV ops on one batch
  (flip, translate, compensation, torch conversion), the torch loader's whole-batch operations, and
  per-transform cost of the torchvision pipeline, single-threaded.
* ``purify``: images/s per denoiser preset and step count (random weights: speed does not depend
  on them), ``--device``.
* ``train``: denoiser training seconds per optimizer step per preset (``train_denoiser``, batch
  ``--train-batch``, median step after the first).
* ``scaling``: ``purify_dataset`` (small preset, ``--scale-steps`` network calls, writes the beton)
  and ``write_beton`` alone for ``--scale-sizes`` images, with a linear fit.

CPU defaults take about 15-25 minutes on 2 cores. On a GPU, e.g.:

    .venv/bin/python benchmarks/throughput.py --device cuda --purify-steps paper=2,10,20,full \\
        --purify-batch 256 --purify-images 4096 --train-steps small=50,paper=30 --train-batch 128
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from eclipse_loader.recipes import PAPER_RECIPE

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    command_line,
    load_cifar,
    machine_info,
    run_isolated,
    time_purification,
    write_json_atomic,
)

LOADERS = ("torchvision_dataloader", "ffcv_plain", "ffcv_compensation", "torch_batched", "torch_batched_1thread")
PROFILE_LOADERS = ("torchvision_no_compensation", "ffcv_decode_only")
TIMING_ORDER = ["torchvision_dataloader", "torchvision_no_compensation", "ffcv_plain", "ffcv_compensation", "torch_batched",
                "torch_batched_1thread", "ffcv_decode_only"]
"""Warm-up order (torchvision first: its workers fork before any FFCV/numba thread exists); rotated per round."""
SHARED_NOTE = (
    "Shared machine: other jobs ran on the same cores during this run (see load_avg fields); absolute "
    "figures are depressed and noisy, ratios are taken within one process and one round."
)


# ---- loaders ---------------------------------------------------------------------------------------------

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


# ---- where the loader time goes ------------------------------------------------------------------------

def _best_of(fn: Any, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _compiled_op(op: Any, shape: tuple[int, int, int]) -> tuple[Any, tuple[int, ...]]:
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    state = State(jit_mode=True, device=torch.device("cpu"), shape=shape, dtype=np.dtype("u1"))
    _, query = op.declare_state_and_memory(state)
    return Compiler.compile(op.generate_code()), tuple(query.shape)


def loader_profile(batch: int, threads: int, images_count: int) -> dict[str, Any]:
    """Per-image cost of each loader operation, measured on its own on real CIFAR-10 batches."""
    import numba
    from ffcv.pipeline.compiler import Compiler
    from ffcv.transforms import RandomHorizontalFlip, RandomTranslate
    from torch.utils.data import default_collate

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV
    from eclipse_loader.compensation import counter_rng as rng
    from eclipse_loader.compensation.functional import compensate_with_keys
    from eclipse_loader.loading.batch_augment import flip_and_translate

    images, labels = load_cifar(max(batch, images_count))
    x = images[:batch]
    indices = np.arange(batch, dtype=np.uint64)
    out: dict[str, Any] = {"batch": batch, "unit": "microseconds per image"}

    ffcv: dict[str, Any] = {}
    for n_threads in sorted({1, threads}):
        Compiler.set_num_threads(n_threads)
        row: dict[str, float] = {}
        ops = {
            "flip": RandomHorizontalFlip(),
            "translate_pad4": RandomTranslate(padding=4),
            "compensation": CompensateFFCV(0.4, 0.05, seed=0),
            "compensation_gray_only": CompensateFFCV(0.4, 0.0, seed=0),
            "compensation_noise_only": CompensateFFCV(0.0, 0.05, seed=0),
        }
        for name, op in ops.items():
            if name.startswith("compensation"):
                op.set_epoch(0)  # compiled by hand, outside a Loader: no pass counters
            fn, dst_shape = _compiled_op(op, (32, 32, 3))
            dst = np.empty((batch, *dst_shape), np.uint8)
            src = x.copy()
            call = (lambda: fn(src, dst, indices)) if name.startswith("compensation") else (lambda: fn(src, dst))
            call()  # compile
            row[name] = round(_best_of(call, 7) / batch * 1e6, 2)
        ffcv[f"threads_{n_threads}"] = row
    out["ffcv_ops"] = ffcv

    # the torch loader's whole-batch operations on one batch (channels-last uint8, as it holds images)
    keys = rng.sample_key(0, 0, torch.arange(batch))
    chw = torch.from_numpy(x).permute(0, 3, 1, 2)
    batched = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        row = {
            "flip_and_translate_pad4": _best_of(lambda: flip_and_translate(chw, keys, True, 4), 7),
            "compensation": _best_of(lambda: compensate_with_keys(chw, keys, p_gray=0.4, sigma=0.05), 7),
            "compensation_gray_only": _best_of(lambda: compensate_with_keys(chw, keys, p_gray=0.4, sigma=0.0), 7),
            "compensation_noise_only": _best_of(lambda: compensate_with_keys(chw, keys, p_gray=0.0, sigma=0.05), 7),
            "to_float": _best_of(lambda: chw.float() / 255.0, 7),
        }
        batched[f"threads_{n_threads}"] = {k: round(v / batch * 1e6, 2) for k, v in row.items()}
    out["torch_batched_ops"] = batched

    # the torch part of the FFCV pipeline on one batch: ToTensor, ToTorchImage (a channels-last CHW view),
    # Convert(float32), torchvision Normalize (mean 0, std 255 when AugmentConfig has no mean/std)
    from torchvision.transforms import Normalize

    normalize = Normalize((0.0, 0.0, 0.0), (255.0, 255.0, 255.0))
    tail = {}
    for n_threads in sorted({1, threads}):
        torch.set_num_threads(n_threads)
        tail[f"threads_{n_threads}"] = round(
            _best_of(lambda: normalize(torch.from_numpy(x).permute(0, 3, 1, 2).float()), 7) / batch * 1e6, 2)
    torch.set_num_threads(1)
    tail["threads_1_contiguous_input"] = round(
        _best_of(lambda: normalize(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().float()), 7) / batch * 1e6, 2)
    out["ffcv_torch_tail_convert_normalize"] = tail

    # torchvision: each transform on single images, as a DataLoader worker runs them (1 thread each)
    torch.set_num_threads(1)
    from torchvision.transforms import v2

    from eclipse_loader import CorruptionCompensation

    steps = [("to_image", v2.ToImage()), ("random_crop_pad4", v2.RandomCrop(32, padding=4)),
             ("horizontal_flip", v2.RandomHorizontalFlip()), ("compensation", CorruptionCompensation(0.4, 0.05)),
             ("to_dtype_float", v2.ToDtype(torch.float32, scale=True))]
    sample_x = images[:images_count]
    costs = {name: 0.0 for name, _ in steps}
    outputs = []
    for _ in range(2):  # second pass timed
        costs = {name: 0.0 for name, _ in steps}
        outputs = []
        for im in sample_x:
            value: Any = im
            for name, transform in steps:
                start = time.perf_counter()
                value = transform(value)
                costs[name] += time.perf_counter() - start
            outputs.append((value, 0))
    tv = {name: round(seconds / len(sample_x) * 1e6, 2) for name, seconds in costs.items()}
    batches = [outputs[i:i + batch] for i in range(0, len(outputs) - batch + 1, batch)] or [outputs]
    tv["collate"] = round(_best_of(lambda: [default_collate(b) for b in batches], 3) / sum(map(len, batches)) * 1e6, 2)
    tv["dataset_getitem_total"] = round(sum(v for k, v in tv.items() if k != "collate"), 2)
    out["torchvision_per_sample_1_thread"] = tv
    out["torchvision_images_timed"] = len(sample_x)
    return out


# ---- purification and denoiser training ----------------------------------------------------------------

def purify_rate(preset: str, steps: Optional[int], batch: int, max_images: int, budget_s: float, device: str, bf16: bool) -> dict[str, Any]:
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig

    torch.manual_seed(0)
    unet = build_unet(preset)
    purifier = Purifier(unet, build_scheduler(), PurifyConfig(steps=steps, bf16=bf16), device=device)
    images, _ = load_cifar(max_images)
    done, seconds = time_purification(purifier, images, batch, budget_s)
    return {
        "preset": preset, "steps": steps or "full", "network_calls": len(purifier.timesteps), "t_star": purifier.t_star,
        "sampler": "ddpm", "device": device, "device_name": _device_name(device), "bf16": bf16, "batch_size": batch,
        "images": done, "seconds": round(seconds, 3), "images_per_s": round(done / seconds, 3),
        "parameters_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
    }


def train_step_time(preset: str, steps: int, batch: int, device: str, sparse: int) -> dict[str, Any]:
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.denoiser import training

    step_ends: list[float] = []
    original = training.DenoiserModule.on_train_batch_end

    def timed(self: Any, *args: Any) -> None:  # this child process only: record when each step ends
        original(self, *args)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        step_ends.append(time.perf_counter())

    training.DenoiserModule.on_train_batch_end = timed
    images, labels = load_cifar(sparse)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        training.train_denoiser(as_labelled_images(images, labels, 10), preset, tmp, max_steps=steps, batch_size=batch,
                                t_max=99, accelerator="gpu" if device.startswith("cuda") else "cpu", progress=False)
        wall = time.perf_counter() - start
    per_step = np.diff(step_ends)  # step k's duration, k >= 2 (the first includes Lightning's set-up)
    return {
        "preset": preset, "device": device, "device_name": _device_name(device), "batch_size": batch, "steps": steps,
        "seconds_per_step_median": round(float(np.median(per_step)), 4),
        "seconds_per_step_all": [round(float(s), 4) for s in per_step],
        "first_step_seconds_incl_setup": round(step_ends[0] - start, 3),
        "wall_seconds_incl_setup_and_save": round(wall, 2), "t_max": 99, "train_images": sparse,
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"{machine_info()['cpu']} ({len(os.sched_getaffinity(0))} cores)"


# ---- scaling -----------------------------------------------------------------------------------------

def make_random_denoiser(preset: str, out_dir: str) -> dict[str, Any]:
    from eclipse_loader.denoiser.io import save_denoiser
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet

    torch.manual_seed(0)
    save_denoiser(build_unet(preset), build_scheduler(), out_dir, {"preset": preset, "weights": "random (benchmark)"})
    return {}


def scale_purify(n: int, denoiser_dir: str, workdir: str, steps: int, batch: int, device: str) -> dict[str, Any]:
    """``purify_dataset`` end to end on ``n`` images; its ``write_beton`` call is timed separately."""
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.purify import run
    from eclipse_loader.purify.purifier import PurifyConfig

    write_seconds: list[float] = []
    original = run.write_beton

    def timed_write(*args: Any, **kwargs: Any) -> Any:  # this child process only
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            write_seconds.append(time.perf_counter() - start)

    run.write_beton = timed_write
    images, labels = load_cifar(n)
    data = as_labelled_images(images, labels, 10)
    out = Path(workdir) / f"purified_{n}.beton"
    start = time.perf_counter()
    run.purify_dataset(data, denoiser_dir, out, config=PurifyConfig(steps=steps), batch_size=batch, device=device,
                       progress=False, work_dir=Path(workdir) / f"work_{n}")
    total = time.perf_counter() - start
    size = out.stat().st_size
    out.unlink()
    return {"images": n, "seconds_total": round(total, 2), "seconds_write_beton": round(sum(write_seconds), 2),
            "seconds_purify": round(total - sum(write_seconds), 2), "beton_bytes": size, "steps": steps, "batch_size": batch,
            "device": device, "images_per_s_purify": round(n / (total - sum(write_seconds)), 2)}


def scale_write(n: int, workdir: str, repeats: int) -> dict[str, Any]:
    """``write_beton`` of ``n`` raw CIFAR-10 images, ``repeats`` times (median seconds)."""
    path = str(Path(workdir) / f"raw_{n}.beton")
    seconds = []
    for _ in range(repeats):
        seconds.append(write_cifar_beton(path, n)["seconds"])
        size = Path(path).stat().st_size
        Path(path).unlink()
    median = statistics.median(seconds)
    return {"images": n, "seconds": median, "seconds_all": seconds, "beton_bytes": size, "images_per_s": round(n / max(median, 1e-9), 1)}


def linear_fit(sizes: list[int], seconds: list[float]) -> dict[str, Any]:
    """seconds = fixed + per_image * n (least squares), and marginal per-image costs between sizes."""
    per_image, fixed = np.polyfit(np.asarray(sizes, float), np.asarray(seconds, float), 1)
    predicted = fixed + per_image * np.asarray(sizes, float)
    ss_res = float(np.sum((np.asarray(seconds) - predicted) ** 2))
    ss_tot = float(np.sum((np.asarray(seconds) - np.mean(seconds)) ** 2)) or 1e-12
    marginal = [(seconds[i + 1] - seconds[i]) / (sizes[i + 1] - sizes[i]) for i in range(len(sizes) - 1)]
    return {"fixed_seconds": round(float(fixed), 3), "seconds_per_image": float(f"{per_image:.4g}"), "r2": round(1 - ss_res / ss_tot, 5),
            "marginal_seconds_per_image": [float(f"{m:.4g}") for m in marginal],
            "marginal_ratio_last_to_first": round(marginal[-1] / marginal[0], 3) if marginal and marginal[0] > 0 else None}


# ---- driver -------------------------------------------------------------------------------------------

def parse_per_preset(text: str, cast: Any) -> dict[str, Any]:
    """``"tiny=2,10;small=1,2"`` style, or ``"small=20,paper=5"`` (one value each)."""
    out: dict[str, Any] = {}
    for part in text.replace(";", " ").split():
        name, _, values = part.partition("=")
        out[name] = [cast(v) for v in values.split(",") if v]
    return out


def parse_per_preset_single(text: str, cast: Any) -> dict[str, Any]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name] = cast(value)
    return out


def steps_value(text: str) -> Optional[int]:
    return None if text == "full" else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="loader,first_batch,loader_memory,loader_profile,purify,train,scaling")
    parser.add_argument("--loaders", default=",".join(TIMING_ORDER), help="loaders the loader stage times")
    parser.add_argument("--first-batch-processes", type=int, default=3, help="fresh processes of the first_batch stage")
    parser.add_argument("--device", default="cpu", help="purification and training device (cpu, cuda)")
    parser.add_argument("--loader-device", default="cpu", help="where loader batches end up (cpu, cuda)")
    parser.add_argument("--loader-samples", type=int, default=50000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3, help="timed loader rounds (one epoch of each loader per round)")
    parser.add_argument("--profile-images", type=int, default=2048)
    parser.add_argument("--purify-steps", default="tiny=2,10,full;small=1,2,10,20,full;paper=2,10",
                        help="network calls per preset; 'full' = the whole chain (t* = 100 calls)")
    parser.add_argument("--purify-batch", default="tiny=64,small=64,paper=16")
    parser.add_argument("--purify-images", type=int, default=1024, help="at most this many images per configuration")
    parser.add_argument("--purify-seconds", type=float, default=15.0, help="stop a configuration after this long (>= 1 batch)")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--train-steps", default="tiny=30,small=20,paper=5")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=2000, help="size of the (sparse) training set")
    parser.add_argument("--scale-sizes", default="1000,5000,50000")
    parser.add_argument("--scale-steps", type=int, default=1, help="network calls per image in the scaling run")
    parser.add_argument("--scale-batch", type=int, default=256)
    parser.add_argument("--write-repeats", type=int, default=3, help="write_beton repeats per size (median)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/throughput-<date>.json")
    parser.add_argument("--table", metavar="RESULTS_JSON", help="print the markdown tables of a results file and exit")
    args = parser.parse_args()
    if args.table:
        import json

        print(markdown_tables(json.loads(Path(args.table).read_text())))
        return
    stages = args.stages.split(",")
    unknown = set(stages) - {"loader", "first_batch", "loader_memory", "loader_profile", "purify", "train", "scaling"}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    out_path = Path(args.out) if args.out else RESULTS / f"throughput-{time.strftime('%Y-%m-%d')}.json"
    result: dict[str, Any] = {
        "benchmark": "throughput", "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command_line(),
        "machine": machine_info(), "load_avg_at_start": [round(v, 2) for v in os.getloadavg()], "note": SHARED_NOTE,
        "stages": stages,
    }
    t0 = time.perf_counter()

    def save(stage: str) -> None:
        result["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        result["wall_seconds"] = round(time.perf_counter() - t0, 1)
        write_json_atomic(out_path, result)
        print(f"[{time.perf_counter() - t0:7.1f}s] {stage} done -> {out_path}", flush=True)

    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        beton = str(Path(tmp) / "cifar_train.beton")
        if {"loader", "loader_memory", "first_batch"} & set(stages):
            result["beton_write"] = run_isolated(write_cifar_beton, beton, args.loader_samples)
            common = dict(samples=args.loader_samples, batch=args.batch_size, workers=args.workers, device=args.loader_device)
            config = {**common, "augmentation": "random crop 32 padding 4 (translate) + horizontal flip p=0.5; "
                      "compensation p_gray=0.4 sigma=0.05 (paper); output float32 NCHW in [0, 1]",
                      "torch_batched": "TorchEpochLoader(num_workers=0, device=--loader-device): whole-batch flip, translate, "
                      "compensation, float; torch intra-op threads = --workers (torch_batched_1thread: 1)",
                      "torchvision": "DataLoader(shuffle, drop_last, persistent_workers) over uint8 arrays, v2.Compose"
                      "([ToImage, RandomCrop(32, padding=4), RandomHorizontalFlip, CorruptionCompensation, ToDtype(float32, scale)])",
                      "ffcv": "make_ffcv_loader(beton, augment=AugmentConfig(compensate=...)), raw (uncompressed) beton, os_cache"}
        if "loader" in stages:
            names = [n for n in TIMING_ORDER if n in args.loaders.split(",")]
            timing = run_isolated(loader_timing, beton, epochs=args.epochs, names=names, sample_interval_s=None, **common)
            medians = timing["median_images_per_s"]
            result["loader_images_per_s"] = {name: medians[name] for name in LOADERS if name in medians}
            result["loader"] = {"config": config, **timing}
            result["targets"] = loader_targets(timing)
            save("loader")
        if "first_batch" in stages:
            result["first_batch"] = first_batch_runs(beton, args.batch_size, args.workers, args.first_batch_processes)
            print("  first batch: " + ", ".join(f"{r['first_batch_seconds']} s" for r in result["first_batch"]["runs"]), flush=True)
            save("first_batch")
        if "loader_memory" in stages:
            result["loader_memory"] = {name: run_isolated(loader_alone, name, beton, **common) for name in LOADERS}
            save("loader_memory")
    if "loader_profile" in stages:
        result["loader_profile"] = run_isolated(loader_profile, args.batch_size, args.workers, args.profile_images)
        save("loader_profile")
    if "purify" in stages:
        batches = parse_per_preset_single(args.purify_batch, int)
        rows = []
        for preset, step_list in parse_per_preset(args.purify_steps, steps_value).items():
            for steps in step_list:
                row = run_isolated(purify_rate, preset, steps, batches.get(preset, 64), args.purify_images,
                                   args.purify_seconds, args.device, args.bf16)
                print(f"  purify {preset} steps={row['steps']}: {row['images_per_s']} img/s", flush=True)
                rows.append(row)
                result["purification"] = rows
                save(f"purify {preset} {steps}")
    if "train" in stages:
        rows = []
        for preset, steps in parse_per_preset_single(args.train_steps, int).items():
            row = run_isolated(train_step_time, preset, steps, args.train_batch, args.device, args.train_images)
            print(f"  train {preset}: {row['seconds_per_step_median']} s/step", flush=True)
            rows.append(row)
            result["denoiser_training"] = rows
            save(f"train {preset}")
    if "scaling" in stages:
        sizes = [int(s) for s in args.scale_sizes.split(",")]
        scaling: dict[str, Any] = {"preset": "small (random weights)", "sizes": sizes, "write_beton": [], "purify_dataset": []}
        result["scaling"] = scaling
        with tempfile.TemporaryDirectory(prefix="throughput-scale-") as tmp:
            run_isolated(make_random_denoiser, "small", str(Path(tmp) / "denoiser"))
            for n in sizes:
                scaling["write_beton"].append(run_isolated(scale_write, n, tmp, args.write_repeats))
                save(f"scaling write {n}")
            scaling["write_beton_fit"] = linear_fit(sizes, [r["seconds"] for r in scaling["write_beton"]])
            for n in sizes:
                scaling["purify_dataset"].append(run_isolated(scale_purify, n, str(Path(tmp) / "denoiser"), tmp,
                                                              args.scale_steps, args.scale_batch, args.device))
                print(f"  purify_dataset {n}: {scaling['purify_dataset'][-1]['seconds_total']} s", flush=True)
                save(f"scaling purify {n}")
            rows = scaling["purify_dataset"]
            scaling["purify_fit"] = linear_fit(sizes, [r["seconds_purify"] for r in rows])
            scaling["purify_dataset_total_fit"] = linear_fit(sizes, [r["seconds_total"] for r in rows])
            save("scaling")


def markdown_tables(result: dict[str, Any]) -> str:
    """The README tables of a results file (``--table PATH`` prints them)."""
    lines: list[str] = []
    add = lines.append
    if "loader_images_per_s" in result:
        loader, targets = result["loader"], result["targets"]
        med, per_round = loader["median_images_per_s"], loader["images_per_s_per_round"]
        add("| loader (batch 256, 2 workers, crop + flip) | images/s, median | per round |")
        add("|---|---|---|")
        for name in [n for n in (*LOADERS, *PROFILE_LOADERS) if n in med]:
            rounds = ", ".join(f"{v:,.0f}" for v in per_round[name])
            add(f"| `{name}` | {med[name]:,.0f} | {rounds} |")
        add("")
        add("| target | median of the rounds' ratios | per round | met |")
        add("|---|---|---|---|")
        labels = {"ffcv_compensation_over_torchvision": ("`ffcv_compensation` >= 3x `torchvision_dataloader`", "{:.2f}x"),
                  "compensation_time_overhead_over_ffcv_plain": ("compensation <= 15% over `ffcv_plain` (epoch time)", "{:+.1%}"),
                  "torch_batched_over_ffcv_compensation": ("`torch_batched` >= 1x `ffcv_compensation`", "{:.2f}x"),
                  "torch_batched_1thread_over_ffcv_compensation": ("`torch_batched_1thread` >= 1x `ffcv_compensation`", "{:.2f}x")}
        for key, (label, fmt) in labels.items():
            if key in targets:
                t = targets[key]
                add(f"| {label} | {fmt.format(t['median_of_round_ratios'])} | "
                    f"{', '.join(fmt.format(v) for v in t['per_round'])} | {'yes' if t['met'] else '**no**'} |")
        add("")
    if "first_batch" in result:
        runs = result["first_batch"]["runs"]
        add("| `make_ffcv_loader` to first batch, fresh process | " + " | ".join(f"run {i}" for i in range(len(runs))) + " |")
        add("|---|" + "---|" * len(runs))
        add("| seconds (run 0: empty numba cache) | " + " | ".join(f"{r['first_batch_seconds']}" for r in runs) + " |")
        add("")
    if "loader_memory" in result:
        add("| loader alone (1 warm-up + 1 epoch) | peak RSS of the process | peak PSS, process + workers |")
        add("|---|---|---|")
        for name, row in result["loader_memory"].items():
            add(f"| `{name}` | {row['memory']['peak_rss_mib']:,.0f} MiB | {row['memory']['peak_tree_pss_mib'] or 0:,.0f} MiB |")
        add("")
    if "purification" in result:
        add("| preset (params) | network calls | batch | images timed | images/s | peak RSS |")
        add("|---|---|---|---|---|---|")
        for row in result["purification"]:
            add(f"| {row['preset']} ({row['parameters_m']} M) | {row['network_calls']} | {row['batch_size']} | {row['images']} | "
                f"{row['images_per_s']:.3g} | {row['memory']['peak_rss_mib']:,.0f} MiB |")
        add("")
    if "denoiser_training" in result:
        add("| preset | batch | s/step, median (steps 2..n) | range | peak RSS |")
        add("|---|---|---|---|---|")
        for row in result["denoiser_training"]:
            add(f"| {row['preset']} | {row['batch_size']} | {row['seconds_per_step_median']:.3g} | "
                f"{min(row['seconds_per_step_all']):.3g}-{max(row['seconds_per_step_all']):.3g} | {row['memory']['peak_rss_mib']:,.0f} MiB |")
        add("")
    scaling = result.get("scaling", {})
    if scaling.get("purify_dataset"):
        writes = {row["images"]: row for row in scaling.get("write_beton", [])}
        add("| images | `purify_dataset`: purify s | its beton write s | images/s (purify) | peak RSS | `write_beton` alone s | peak PSS (writer tree) |")
        add("|---|---|---|---|---|---|---|")
        for row in scaling["purify_dataset"]:
            write = writes.get(row["images"], {})
            add(f"| {row['images']:,} | {row['seconds_purify']} | {row['seconds_write_beton']} | {row['images_per_s_purify']} | "
                f"{row['memory']['peak_rss_mib']:,.0f} MiB | {write.get('seconds', '')} | {(write.get('memory') or {}).get('peak_tree_pss_mib') or 0:,.0f} MiB |")
        for key in ("purify_fit", "write_beton_fit"):
            if key in scaling:
                fit = scaling[key]
                add(f"\n{key}: {fit['fixed_seconds']} s + {fit['seconds_per_image']:.3g} s/image (r2 {fit['r2']}), "
                    f"marginal s/image {fit['marginal_seconds_per_image']}")
    return "\n".join(lines)


def _ratio_target(per_round: dict[str, list[float]], med: dict[str, float], num: str, den: str, **fields: Any) -> dict[str, Any]:
    """``num / den`` images/s, per round (same round, adjacent epochs) and of the medians."""
    ratios = [a / b for a, b in zip(per_round[num], per_round[den])]
    return {**fields, "median_of_round_ratios": round(statistics.median(ratios), 3),
            "per_round": [round(v, 3) for v in ratios], "ratio_of_medians": round(med[num] / med[den], 3)}


def loader_targets(timing: dict[str, Any]) -> dict[str, Any]:
    """The issues' targets, from each round's paired ratios (robust to load drift) and from medians;
    only those whose loaders were timed."""
    per_round, med = timing["images_per_s_per_round"], timing["median_images_per_s"]
    targets: dict[str, Any] = {}
    if {"ffcv_compensation", "torchvision_dataloader"} <= set(med):
        t = _ratio_target(per_round, med, "ffcv_compensation", "torchvision_dataloader", target_min=3.0)
        targets["ffcv_compensation_over_torchvision"] = {**t, "met": t["median_of_round_ratios"] >= 3.0}
    if {"ffcv_plain", "ffcv_compensation"} <= set(med):
        t = _ratio_target(per_round, med, "ffcv_plain", "ffcv_compensation")
        overhead = [round(v - 1, 3) for v in t["per_round"]]
        targets["compensation_time_overhead_over_ffcv_plain"] = {
            "target_max": 0.15, "definition": "epoch time with compensation / epoch time without - 1 (issue 16 item 1)",
            "median_of_round_ratios": round(t["median_of_round_ratios"] - 1, 3), "per_round": overhead,
            "from_medians": round(t["ratio_of_medians"] - 1, 3), "met": t["median_of_round_ratios"] - 1 <= 0.15}
    for name in ("torch_batched", "torch_batched_1thread"):
        if {name, "ffcv_compensation"} <= set(med):
            t = _ratio_target(per_round, med, name, "ffcv_compensation", target_min=1.0,
                              definition="TorchEpochLoader images/s / FFCV + compensation images/s (issue 16 item 2, CPU)")
            targets[f"{name}_over_ffcv_compensation"] = {**t, "met": t["median_of_round_ratios"] >= 1.0}
    return targets


def first_batch_seconds(beton: str, batch: int, workers: int) -> dict[str, Any]:
    """Seconds from `make_ffcv_loader` (training pipeline with compensation) to its first batch."""
    start = time.perf_counter()
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader
    from eclipse_loader.loading.config import AugmentConfig

    imported = time.perf_counter()
    loader = make_ffcv_loader(beton, batch, augment=AugmentConfig(p_gray=PAPER_RECIPE.p_gray, sigma=PAPER_RECIPE.sigma),
                              shuffle=True, drop_last=True, num_workers=workers)
    epoch = iter(loader)
    next(epoch)
    done = time.perf_counter()
    epoch.close()  # (kept open until here: abandoning it waits for FFCV's thread to finish a batch)
    loader.close()
    return {"import_seconds": round(imported - start, 2), "first_batch_seconds": round(done - imported, 2),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def first_batch_runs(beton: str, batch: int, workers: int, processes: int) -> dict[str, Any]:
    """`first_batch_seconds` in ``processes`` fresh processes that share an empty numba cache directory."""
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        previous = os.environ.get("NUMBA_CACHE_DIR")
        os.environ["NUMBA_CACHE_DIR"] = cache  # inherited by the spawned children
        try:
            runs = [run_isolated(first_batch_seconds, beton, batch, workers, sample_interval_s=None) for _ in range(processes)]
        finally:
            if previous is None:
                os.environ.pop("NUMBA_CACHE_DIR")
            else:
                os.environ["NUMBA_CACHE_DIR"] = previous
    warm = [r["first_batch_seconds"] for r in runs[1:]]
    return {"runs": runs, "note": "run 0 compiles (empty cache), the others load the cached code",
            "target_max_seconds_after_first_run": 1.0, "met": bool(warm) and max(warm) <= 1.0}


if __name__ == "__main__":
    main()

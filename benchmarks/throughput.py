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

Stages run only when named (not in the default), each appending JSON lines to its own file as the
script it replaces did (its options keep their names with the stage's prefix, e.g. ``--samples`` is
``--loader-speed-samples``); they do not write the throughput JSON:

* ``loader_speed`` (was ``bench_loader.py``): FFCV vs the torch loader with/without augmentation and
  compensation -> ``loader_speed.jsonl``.
* ``purify_speed`` (was ``bench_purify.py``): purification images/s per preset and sampler/step count
  -> ``purify_speed.jsonl``.
* ``train_denoiser`` (was ``bench_train_denoiser.py``): denoiser training steps/s and purifier PSNR,
  t <= t* vs the full range -> ``train_denoiser.jsonl``.

Each stage's code is a module of ``benchmarks/throughput_stages/``.

CPU defaults take about 15-25 minutes on 2 cores. On a GPU, e.g.:

    .venv/bin/python benchmarks/throughput.py --device cuda --purify-steps paper=2,10,20,full \\
        --purify-batch 256 --purify-images 4096 --train-steps small=50,paper=30 --train-batch 128
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from _common import RESULTS, command_line, machine_info, run_isolated, write_json_atomic
from throughput_stages import loader_speed, purify_speed, train_denoiser
from throughput_stages.denoiser import (parse_per_preset, parse_per_preset_single, purify_rate, steps_value,
                                        train_step_time)
from throughput_stages.first_batch import first_batch_runs
from throughput_stages.loaders import LOADERS, TIMING_ORDER, loader_alone, loader_timing, write_cifar_beton
from throughput_stages.profile import loader_profile
from throughput_stages.report import loader_targets, markdown_tables
from throughput_stages.scaling import linear_fit, make_random_denoiser, scale_purify, scale_write

JSON_STAGES = ("loader", "first_batch", "loader_memory", "loader_profile", "purify", "train", "scaling")
"""The stages of the throughput JSON (the default); the JSONL stages below run only when named."""
JSONL_STAGES = {"loader_speed": loader_speed, "purify_speed": purify_speed, "train_denoiser": train_denoiser}
SHARED_NOTE = (
    "Shared machine: other jobs ran on the same cores during this run (see load_avg fields); absolute "
    "figures are depressed and noisy, ratios are taken within one process and one round."
)
Save = Callable[[str], None]


def build_parser() -> argparse.ArgumentParser:
    """The options of every stage (the JSONL stages' under their own prefixes)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(JSON_STAGES),
                        help="comma list from " + ",".join((*JSON_STAGES, *JSONL_STAGES)))
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
    for stage in JSONL_STAGES.values():
        stage.add_options(parser)
    return parser

LOADER_CONFIG = {
    "augmentation": "random crop 32 padding 4 (translate) + horizontal flip p=0.5; "
    "compensation p_gray=0.4 sigma=0.05 (paper); output float32 NCHW in [0, 1]",
    "torch_batched": "TorchEpochLoader(num_workers=0, device=--loader-device): whole-batch flip, translate, "
    "compensation, float; torch intra-op threads = --workers (torch_batched_1thread: 1)",
    "torchvision": "DataLoader(shuffle, drop_last, persistent_workers) over uint8 arrays, v2.Compose"
    "([ToImage, RandomCrop(32, padding=4), RandomHorizontalFlip, CorruptionCompensation, ToDtype(float32, scale)])",
    "ffcv": "make_ffcv_loader(beton, augment=AugmentConfig(compensate=...)), raw (uncompressed) beton, os_cache"}


def run_loader_stages(args: argparse.Namespace, stages: list[str], result: dict[str, Any], save: Save) -> None:
    """``loader``, ``first_batch`` and ``loader_memory``, on one CIFAR-10 beton written for them."""
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        beton = str(Path(tmp) / "cifar_train.beton")
        result["beton_write"] = run_isolated(write_cifar_beton, beton, args.loader_samples)
        common = dict(samples=args.loader_samples, batch=args.batch_size, workers=args.workers, device=args.loader_device)
        if "loader" in stages:
            names = [n for n in TIMING_ORDER if n in args.loaders.split(",")]
            timing = run_isolated(loader_timing, beton, epochs=args.epochs, names=names, sample_interval_s=None, **common)
            medians = timing["median_images_per_s"]
            result["loader_images_per_s"] = {name: medians[name] for name in LOADERS if name in medians}
            result["loader"] = {"config": {**common, **LOADER_CONFIG}, **timing}
            result["targets"] = loader_targets(timing)
            save("loader")
        if "first_batch" in stages:
            result["first_batch"] = first_batch_runs(beton, args.batch_size, args.workers, args.first_batch_processes)
            print("  first batch: " + ", ".join(f"{r['first_batch_seconds']} s" for r in result["first_batch"]["runs"]), flush=True)
            save("first_batch")
        if "loader_memory" in stages:
            result["loader_memory"] = {name: run_isolated(loader_alone, name, beton, **common) for name in LOADERS}
            save("loader_memory")


def run_purify(args: argparse.Namespace, result: dict[str, Any], save: Save) -> None:
    """``purify``: images/s per preset and step count, each configuration in its own process."""
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


def run_train(args: argparse.Namespace, result: dict[str, Any], save: Save) -> None:
    """``train``: denoiser training s/step per preset."""
    rows = []
    for preset, steps in parse_per_preset_single(args.train_steps, int).items():
        row = run_isolated(train_step_time, preset, steps, args.train_batch, args.device, args.train_images)
        print(f"  train {preset}: {row['seconds_per_step_median']} s/step", flush=True)
        rows.append(row)
        result["denoiser_training"] = rows
        save(f"train {preset}")


def run_scaling(args: argparse.Namespace, result: dict[str, Any], save: Save) -> None:
    """``scaling``: `write_beton` and `purify_dataset` over ``--scale-sizes``, with linear fits."""
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


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_tables(json.loads(Path(args.table).read_text())))
        return
    stages = args.stages.split(",")
    unknown = set(stages) - {*JSON_STAGES, *JSONL_STAGES}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}")
    for name, stage in JSONL_STAGES.items():  # their own JSONL files, as the scripts they replace wrote
        if name in stages:
            stage.run(args)
    if not set(stages) & set(JSON_STAGES):
        return
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

    if {"loader", "loader_memory", "first_batch"} & set(stages):
        run_loader_stages(args, stages, result, save)
    if "loader_profile" in stages:
        result["loader_profile"] = run_isolated(loader_profile, args.batch_size, args.workers, args.profile_images)
        save("loader_profile")
    if "purify" in stages:
        run_purify(args, result, save)
    if "train" in stages:
        run_train(args, result, save)
    if "scaling" in stages:
        run_scaling(args, result, save)


if __name__ == "__main__":
    main()

"""Candidate defaults x attacks on a `defense.py` protocol: what each component buys and costs.

    python benchmarks/ablation.py --protocol cpu-quick                   # here (2 CPU cores: hours)
    python benchmarks/ablation.py --protocol cpu-quick --device cuda \\
        --splits cpu-quick-splits.npz --denoiser DIR                     # elsewhere, with carried images

Each candidate is a `Defense` (offline steps, purification settings, online augmentation). Candidates
whose noise level exceeds what the protocol's denoiser was trained on use a second, *wide* denoiser
(trained the same way but on timesteps up to ``--wide-t-max``; ``<workdir>/denoiser-t<T>``). Cells are
shared with `defense.py` (``<workdir>/cells.jsonl``, keyed by attack and defence name), so an interrupted
run resumes and a defence already in the table is not trained again. The result, ``benchmarks/results/ablation-<protocol>-<date>.json`` (+ ``.md``, ``.png``), gives
per candidate: accuracy per attack, the mean, the worst ratio to the protocol's clean accuracy, the cost
on clean data (attack row ``"none"``), purification GFLOP per image (FlopCounterMode) and the offline
steps' images/s on the machine that ran them.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from _common import RESULTS, command_line, grouped_bar_plot, machine_info
from defense import ATTACKS, PROTOCOLS, Harness, log

from eclipse_loader.evaluation.defense_registry import COMPENSATION, CROP_FLIP, DEFENSES, Defense, PurifySettings
from eclipse_loader.loading.config import AugmentConfig

MILD = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=0.1, sigma=0.02)
MID = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=0.2, sigma=0.03)
NOISE_ONLY = AugmentConfig(flip=True, translate_padding=4, compensate=True, p_gray=0.0, sigma=0.02)
R = ("repair-outliers",)
RP = ("repair-outliers", "purify")


def _c(name: str, offline: tuple[str, ...], augment: AugmentConfig = CROP_FLIP, description: str = "",
       **purify: Any) -> Defense:
    return Defense(name, offline, augment, description or name, PurifySettings(**purify))


CANDIDATES: dict[str, Defense] = {d.name: d for d in (
    DEFENSES["none"],
    DEFENSES["jpeg10"],
    DEFENSES["purification"],
    DEFENSES["eclipse-paper"],
    DEFENSES["eclipse"],
    _c("repair", R, description="isolated outlier pixels repaired"),
    _c("repair+purify", RP, description="outlier repair, then the protocol's purification"),
    _c("repair+purify+mild", RP, MILD, description="... + compensation p_gray 0.1, sigma 0.02"),
    _c("repair+purify+noise.02", RP, NOISE_ONLY, description="... + Gaussian noise 0.02 only"),
    _c("repair+purify+comp", RP, COMPENSATION, description="... + the paper's compensation"),
    _c("repair+purify-s1-d3", RP, description="one call, three noise draws averaged", steps=1, draws=3),
    _c("repair+purify-t200", RP, description="noise t* = 200 (wide denoiser)", t_star=200),
    _c("repair+purify-t300", RP, description="noise t* = 300 (wide denoiser)", t_star=300),
    _c("repair+purify-t300+mild", RP, MILD, description="t* = 300 + mild compensation", t_star=300),
    _c("repair+purify-t400", RP, description="noise t* = 400 (wide denoiser)", t_star=400),
    _c("repair+purify-t500", RP, description="noise t* = 500 (wide denoiser)", t_star=500),
    _c("repair+purify-t600", RP, description="noise t* = 600 (wide denoiser)", t_star=600),
    _c("repair+purify-t400+mild", RP, MILD, description="t* = 400 + mild compensation", t_star=400),
    _c("repair+purify-t500+mild", RP, MILD, description="t* = 500 + mild compensation", t_star=500),
    _c("repair+purify-t400+mid", RP, MID, description="t* = 400 + compensation p_gray 0.2, sigma 0.03", t_star=400),
    _c("repair+purify-t400-s1", RP, description="t* = 400, one network call", t_star=400, steps=1),
    _c("repair+purify-t400-s1-d3", RP, description="t* = 400, one call, three draws averaged", t_star=400, steps=1,
       draws=3),
)}
DEFAULT_ORDER = ("none", "repair+purify", "repair+purify-t200", "repair+purify-t300", "repair+purify+mild",
                 "eclipse-paper", "jpeg10", "purification", "repair", "repair+purify+noise.02",
                 "repair+purify-t300+mild", "repair+purify-s1-d3", "repair+purify+comp", "repair+purify-t400")


def for_harness(defense: Defense, harness: Harness, wide_t_max: int) -> Defense:
    """``defense`` with the wide denoiser named when its noise level is beyond the protocol's denoiser."""
    t_star = defense.purify.t_star or harness.protocol.t_star
    if not defense.purifies or defense.purify.denoiser_t_max is not None or t_star - 1 <= harness.denoiser_t_max:
        return defense
    return dataclasses.replace(defense, purify=dataclasses.replace(defense.purify, denoiser_t_max=wide_t_max))


def summarise(cells: dict[str, dict[str, float]], costs: dict[str, dict[str, Any]], attacks: list[str],
              args: argparse.Namespace, harness: Harness) -> dict[str, Any]:
    clean = cells.get("none", {}).get("none")
    table = {a: {c: cells[a][c] for c in cells.get(a, {})} for a in ["none", *attacks] if a in cells}
    per_candidate = {}
    for name in args.candidates:
        accs = [table.get(a, {}).get(name) for a in attacks]
        done = [x for x in accs if x is not None]
        entry: dict[str, Any] = {"description": CANDIDATES[name].description, "attacks_done": len(done), **costs.get(name, {})}
        if done and len(done) == len(attacks):
            entry["mean_accuracy"] = float(np.mean(done))
        if clean and done:
            entry["worst_ratio_to_clean"] = min(done) / clean
        if clean and name in table.get("none", {}):
            entry["clean_cost_points"] = 100 * (clean - table["none"][name])
        per_candidate[name] = entry
    return {
        "protocol": harness.protocol.name, "date": time.strftime("%Y-%m-%d"), "machine": machine_info(),
        "command": args.command_line, "clean_accuracy": clean, "table": table, "candidates": per_candidate,
        "attacks_in_means": attacks,
        "settings": {**dataclasses.asdict(harness.protocol), "seed": harness.seed, "wide_t_max": args.wide_t_max,
                     "train_images": len(harness.train), "test_images": len(harness.test)},
        "timings": harness.timings,
    }


def markdown(result: dict[str, Any]) -> str:
    attacks = result["attacks_in_means"]
    lines = [f"Ablation, protocol `{result['protocol']}`, {result['date']}, {result['machine'].get('cuda') or result['machine'].get('cpu')}",
             f"command: `{result['command']}`", "",
             "| candidate | " + " | ".join(["none", *attacks]) + " | mean | worst/clean | clean cost | GFLOP/img |",
             "|---" * (len(attacks) + 6) + "|"]
    for name, entry in result["candidates"].items():
        cells = [result["table"].get(a, {}).get(name) for a in ["none", *attacks]]
        fmt = [f"{100 * c:.1f}" if c is not None else "" for c in cells]
        mean = entry.get("mean_accuracy")
        worst = entry.get("worst_ratio_to_clean")
        cost = entry.get("clean_cost_points")
        gflop = entry.get("purification_gflop_per_image")
        lines.append(f"| {name} | " + " | ".join(fmt) + f" | {'' if mean is None else f'{100 * mean:.1f}'} | "
                     f"{'' if worst is None else f'{worst:.2f}'} | {'' if cost is None else f'{cost:+.1f}'} | "
                     f"{'' if gflop is None else f'{gflop:.2f}'} |")
    return "\n".join(lines) + "\n"


def bar_plot(result: dict[str, Any], path: Path) -> None:
    clean = result["clean_accuracy"]
    rows = {a: result["table"].get(a, {}) for a in ["none", *result["attacks_in_means"]]}
    grouped_bar_plot(rows, list(result["candidates"]), path, title=f"ablation, {result['protocol']} ({result['date']})",
                     reference=(0.9 * clean, "0.9 x clean") if clean else None, width_per_group=1.2,
                     legend_font=6, legend_cols=2, dpi=120)


def candidate_costs(defense: Defense, harness: Harness) -> dict[str, Any]:
    """Purification GFLOP per image and the offline steps' measured images/s (from the harness timings)."""
    out: dict[str, Any] = {"purification_gflop_per_image": 0.0}
    if defense.purifies:
        out["purification_gflop_per_image"] = harness.purification_gflop_per_image(defense.purify)
        seconds = [harness.timings[k] for k in harness.purify_timing_keys(defense)]
        if seconds:
            out["purify_images_per_s"] = round(len(harness.train) / float(np.median(seconds)), 1)
    return out


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu-quick")
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--candidates", default=",".join(DEFAULT_ORDER), help="comma list from " + ",".join(CANDIDATES))
    parser.add_argument("--workdir", type=Path, default=None, help="default bench-work/defense-<protocol> (shared with defense.py)")
    parser.add_argument("--splits", type=Path, default=None, help="npz of (train, sparse, test) images (defense.save_splits)")
    parser.add_argument("--denoiser", type=Path, default=None, help="copy this trained denoiser dir into the work dir first")
    parser.add_argument("--wide-t-max", type=int, default=399, help="timestep range of the wide denoiser")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", default="", help="suffix of the result file name (e.g. the device)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    args.candidates = [c for c in args.candidates.split(",") if c]
    unknown = [c for c in args.candidates if c not in CANDIDATES]
    if unknown:
        parser.error(f"unknown candidate(s) {unknown}; choose from {list(CANDIDATES)}")
    args.command_line = command_line().replace(" --report-only", "")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    protocol = PROTOCOLS[args.protocol]
    workdir = args.workdir or Path("bench-work") / f"defense-{protocol.work_name}"
    if args.denoiser is not None and not (workdir / "denoiser" / "denoiser.json").is_file():
        import shutil

        shutil.copytree(args.denoiser, workdir / "denoiser", dirs_exist_ok=True)
    harness = Harness(protocol, workdir, args.device, args.seed, args.splits)
    cells: dict[str, dict[str, float]] = {}
    costs: dict[str, dict[str, Any]] = {}
    stem = args.out / f"ablation-{protocol.name}-{time.strftime('%Y-%m-%d')}{args.tag}"
    args.out.mkdir(parents=True, exist_ok=True)

    def report() -> None:
        result = summarise(cells, costs, attacks, args, harness)
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text(markdown(result))
        try:
            bar_plot(result, stem.with_suffix(".png"))
        except ImportError:
            log("matplotlib missing: no bar plot")

    for name in args.candidates:
        defense = for_harness(CANDIDATES[name], harness, args.wide_t_max)
        for attack in ["none", *attacks]:
            if args.report_only and (attack, name) not in harness.cells:
                continue
            record = harness.run_cell(attack, defense)
            cells.setdefault(attack, {})[name] = record["accuracy"]
        costs[name] = candidate_costs(defense, harness)
        report()
        log(f"candidate {name} done ({os.getloadavg()[0]:.1f} load)")
    report()
    log(f"wrote {stem.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The harness's result: the summary JSON of the finished cells, its markdown table and bar plot."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Optional

import numpy as np

from _common import grouped_bar_plot, log, machine_info
from defense_harness import REGISTRY, Harness

from eclipse_loader.evaluation.defense_registry import AUTO, AUTO_BEST, Defense


def summarise(harness: Harness, attacks: list[str], adaptive: list[str], defenses: list[str], args: argparse.Namespace,
              started: float, registry: Optional[dict[str, Defense]] = None) -> dict[str, Any]:
    """The result JSON of the finished cells; ``registry``: the defences by name (default `REGISTRY`)."""
    cells = harness.cells
    registry = REGISTRY if registry is None else registry

    def row(attack: str) -> dict[str, float]:
        return {d: cells[(attack, d)]["accuracy"] for d in defenses if (attack, d) in cells}

    table = {a: row(a) for a in ["none", *attacks]}
    clean = table["none"].get("none")
    means = {d: float(np.mean([table[a][d] for a in attacks])) for d in defenses if all(d in table[a] for a in attacks)}
    result: dict[str, Any] = {
        "protocol": harness.protocol.name,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_info(),
        "command": args.command_line,
        "clean_accuracy": clean,
        "table": table,
        "mean_accuracy_by_defense": means,
        "relative_to_clean": ({d: m / clean for d, m in means.items()} if clean else None),
        "adaptive": {a: row(a) for a in adaptive},
        "attacks_in_means": attacks,
        "defenses": {d: registry[d].description for d in defenses},
        "victim_seed": harness.victim_seed,
        "settings": {**asdict(harness.protocol), "seed": harness.seed, "train_images": len(harness.train),
                     "sparse_images": len(harness.sparse), "test_images": len(harness.test)},
        "purification_gflop_per_image": harness.purification_gflop_per_image(),
        "purification_gflop_per_image_by_defense": {
            d: harness.purification_gflop_per_image(registry[d].purify) for d in defenses if registry[d].purifies},
        "worst_ratio_to_clean_by_defense": ({d: min(table[a][d] for a in attacks) / clean for d in means}
                                            if clean else None),
        "clean_cost_points_by_defense": ({d: round(100 * (clean - table["none"][d]), 2) for d in table["none"]}
                                         if clean else None),
        "timings": harness.timings,
        "cell_seconds": {f"{c['attack']}|{c['defense']}": c["train_seconds"] + c["offline_seconds"]
                         for c in cells.values()},
        "wall_seconds_this_invocation": round(time.perf_counter() - started),
        "complete": all(len(table[a]) == len(defenses) for a in table),
    }
    if AUTO in defenses:
        result["auto_choices"] = harness.auto_choices
    if AUTO_BEST in defenses:
        result["auto_best_choices"] = harness.auto_best_choices
    return result


def write_outputs(result: dict[str, Any], out_dir: Path, suffix: str = "", stem: Optional[str] = None) -> Path:
    """Write ``result`` as defense-<protocol>-<date><suffix>.{json,md,png} (a victim seed adds its own suffix),
    or as ``stem``.{json,md,png} when given."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix += "" if result.get("victim_seed", result["settings"]["seed"]) == result["settings"]["seed"] \
        else f"-victim-seed{result['victim_seed']}"
    stem = out_dir / (stem or f"defense-{result['protocol']}-{result['date']}{suffix}")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown_table(result))
    try:
        bar_plot(result, stem.with_suffix(".png"))
    except ImportError:
        log("matplotlib missing: no bar plot (pip install -e .[bench])")
    return stem.with_suffix(".json")


def markdown_table(result: dict[str, Any]) -> str:
    defenses = list(result["defenses"])
    lines = [f"Clean test accuracy (%), protocol `{result['protocol']}`, {result['date']}, "
             f"{result['machine']['cpu']} ({result['machine']['cores']} cores"
             f"{', ' + result['machine']['cuda'] if result['machine']['cuda'] else ''}).",
             f"Command: `{result['command']}`", "",
             *([f"**{result['label']}**", ""] if result.get("label") else []),
             "| attack | " + " | ".join(defenses) + " |", "|---|" + "---:|" * len(defenses)]

    def fmt(row: dict[str, float]) -> str:
        return " | ".join(f"{100 * row[d]:.1f}" if d in row else "–" for d in defenses)

    for attack, row in result["table"].items():
        name = "none (clean data)" if attack == "none" else attack
        lines.append(f"| {name} | {fmt(row)} |")
    means = result["mean_accuracy_by_defense"]
    lines.append(f"| **mean over attacks** | {fmt(means)} |")
    for attack, row in result["adaptive"].items():
        lines.append(f"| {attack} (adaptive, not in mean) | {fmt(row)} |")
    return "\n".join(lines) + "\n"


def bar_plot(result: dict[str, Any], path: Path) -> None:
    clean = result["clean_accuracy"]
    grouped_bar_plot({**result["table"], "MEAN": result["mean_accuracy_by_defense"]}, list(result["defenses"]), path,
                     title=f"attack x defence, protocol {result['protocol']} ({result['date']})",
                     reference=(clean, "clean, no defence") if clean else None, rotation=20)

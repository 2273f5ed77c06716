"""Issue 18's targets for the ``auto`` column, from a harness run that has it and a committed fixed-defence table.

    python benchmarks/auto_targets.py benchmarks/results/defense-cpu-quick-2026-12-02.json \\
        --fixed benchmarks/results/defense-cpu-quick-2026-11-24.json

Per attack: auto's accuracy, the best fixed defence (from ``--fixed``, the columns the auto run also has
take the auto run's own cells) and the gap; auto's ratio to clean; the means; auto on clean data against
no defence; and the cells both tables have (``none``), which must agree when the code did not move them.
Writes ``<auto stem>-targets.{json,md}``. Several auto result files of one protocol and victim seed (rows
run in separate invocations) are judged as one table (`merge_runs`); ``--out STEM`` names the outputs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

AUTO = "auto"
CHOICES = {"auto": "auto_choices", "auto-best": "auto_best_choices"}  # column -> the result's key of its choices


def _selected(defense: str) -> bool:
    """Columns that are not fixed defences: the auto columns and single selection candidates."""
    return defense in CHOICES or defense.startswith("candidate:")


def merge_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from several of the same protocol and victim seed: the union of their rows (a cell of an
    earlier run is kept over a later one's), of their choices and of their attacks; the clean accuracy of the
    first. Raises ValueError for runs of other protocols or seeds, or whose clean cells disagree."""
    if len(runs) == 1:
        return runs[0]
    keys = {(r.get("protocol"), r.get("victim_seed")) for r in runs}
    if len(keys) > 1:
        raise ValueError(f"the auto results are of different protocols / victim seeds: {sorted(map(str, keys))}")
    cleans = sorted({r["clean_accuracy"] for r in runs})
    if cleans[-1] - cleans[0] > 1e-9:
        raise ValueError(f"the auto results' clean accuracies differ ({cleans}): not the same victim")
    merged = {**runs[0], "command": " ; ".join(r["command"] for r in runs), "table": {}, "attacks_in_means": []}
    for field in CHOICES.values():
        merged[field] = {}
    for r in runs:
        for attack, row in r["table"].items():
            merged["table"][attack] = {**row, **merged["table"].get(attack, {})}
        merged["attacks_in_means"] += [a for a in r["attacks_in_means"] if a not in merged["attacks_in_means"]]
        for field in CHOICES.values():
            merged[field] = {**r.get(field, {}), **merged[field]}
    return merged


def targets(run: dict[str, Any], fixed: dict[str, Any], column: str = AUTO) -> dict[str, Any]:
    """The comparison of ``run``'s ``column`` (``auto`` or ``auto-best``) with every fixed defence of ``fixed``
    (and of ``run``)."""
    choices = run.get(CHOICES[column], {})
    attacks = [a for a in run["attacks_in_means"] if column in run["table"].get(a, {})]
    clean = run["clean_accuracy"]
    rows, shared = {}, {}
    for attack in attacks:
        candidates = {**{d: v for d, v in fixed["table"].get(attack, {}).items() if not _selected(d)},
                      **{d: v for d, v in run["table"][attack].items() if not _selected(d)}}
        best = max(candidates, key=candidates.get)
        auto = run["table"][attack][column]
        rows[attack] = {"auto": auto, "chosen": choices.get(attack, {}).get("chosen"),
                        "best_fixed": best, "best_fixed_accuracy": candidates[best],
                        "gap_points": round(100 * (auto - candidates[best]), 2), "ratio_to_clean": auto / clean}
    for attack in ["none", *attacks]:
        for d, v in run["table"].get(attack, {}).items():
            if not _selected(d) and d in fixed["table"].get(attack, {}):
                shared[f"{attack}|{d}"] = {"this_run": v, "fixed_table": fixed["table"][attack][d]}
    complete = len(attacks) == len(fixed["attacks_in_means"])
    auto_mean = sum(r["auto"] for r in rows.values()) / len(rows) if rows else None
    fixed_means = {d: sum(fixed["table"][a][d] for a in attacks) / len(attacks) for d in fixed["defenses"]
                   if not _selected(d) and rows and all(d in fixed["table"][a] for a in attacks)}
    clean_auto = run["table"]["none"].get(column)
    return {
        "column": column, "auto_run": run["command"], "fixed_table": fixed["command"], "fixed_date": fixed["date"],
        "attacks": attacks, "all_attacks_of_the_fixed_table": complete, "clean_accuracy": clean, "per_attack": rows,
        "auto_mean": auto_mean, "fixed_means_over_the_same_attacks": fixed_means,
        "auto_on_clean": clean_auto, "auto_choice_on_clean": choices.get("none", {}).get("chosen"),
        "shared_cells": shared,
        "targets": {
            "ratio_to_clean_ge_0.90_on_every_attack": bool(rows) and all(r["ratio_to_clean"] >= 0.9 for r in rows.values()),
            "within_1_point_of_best_fixed_on_every_attack": bool(rows) and all(r["gap_points"] >= -1 for r in rows.values()),
            "mean_ge_best_fixed_mean_plus_3_points": (auto_mean is not None and bool(fixed_means)
                                                       and auto_mean >= max(fixed_means.values()) + 0.03),
            "clean_within_1_point_of_none": clean_auto is not None and abs(clean_auto - clean) <= 0.01,
        },
    }


def markdown(t: dict[str, Any]) -> str:
    lines = [f"`{t.get('column', AUTO)}` against the fixed defences ({len(t['attacks'])} attacks"
             + ("" if t["all_attacks_of_the_fixed_table"] else ", NOT all of the fixed table's") + ")",
             f"auto run: `{t['auto_run']}`; fixed defences: `{t['fixed_table']}` ({t['fixed_date']})", "",
             "| attack | auto chose | auto | best fixed | its accuracy | gap (points) | auto / clean |",
             "|---|---|---:|---|---:|---:|---:|"]
    for attack, r in t["per_attack"].items():
        lines.append(f"| {attack} | {r['chosen']} | {100 * r['auto']:.1f} | {r['best_fixed']} | "
                     f"{100 * r['best_fixed_accuracy']:.1f} | {r['gap_points']:+.1f} | {r['ratio_to_clean']:.2f} |")
    if t["auto_mean"] is not None:
        best = max(t["fixed_means_over_the_same_attacks"].items(), key=lambda kv: kv[1])
        lines += ["", f"Mean over these attacks: auto {100 * t['auto_mean']:.1f}; best fixed mean {best[0]} "
                      f"{100 * best[1]:.1f}."]
    if t["auto_on_clean"] is not None:
        lines.append(f"Clean data: auto ({t['auto_choice_on_clean']}) {100 * t['auto_on_clean']:.1f} vs no defence "
                     f"{100 * t['clean_accuracy']:.1f}.")
    lines += ["", "Targets: " + "; ".join(f"{k}: {'MET' if v else 'MISSED'}" for k, v in t["targets"].items()) + ".",
              "", "Cells in both tables (this run / the fixed table): " + ", ".join(
                  f"{k} {100 * v['this_run']:.1f}/{100 * v['fixed_table']:.1f}" for k, v in t["shared_cells"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("auto_result", type=Path, nargs="+",
                    help="defense.py result JSON(s) with an 'auto' column (several: one protocol and victim seed)")
    ap.add_argument("--fixed", type=Path, required=True, help="a defense.py result JSON with the fixed defences")
    ap.add_argument("--column", choices=sorted(CHOICES), default=AUTO, help="the selected column to judge")
    ap.add_argument("--out", type=Path, default=None,
                    help="stem of the outputs (default: the first auto result's, plus -targets)")
    args = ap.parse_args(argv)
    for path in (*args.auto_result, args.fixed):
        if not path.is_file():
            raise SystemExit(f"{path}: no such result file")
    try:
        run = merge_runs([json.loads(path.read_text()) for path in args.auto_result])
    except ValueError as error:
        raise SystemExit(f"{', '.join(map(str, args.auto_result))}: {error}") from None
    t = targets(run, json.loads(args.fixed.read_text()), args.column)
    suffix = "-targets" + ("" if args.column == AUTO else f"-{args.column}")
    first = args.auto_result[0]
    stem = args.out if args.out is not None else first.with_name(first.stem + suffix)
    stem.with_suffix(".json").write_text(json.dumps(t, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown(t))
    print(markdown(t), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

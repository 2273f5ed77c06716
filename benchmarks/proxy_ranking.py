"""How well auto's proxy ranks the defences the real victim ranks (issue 18: rank correlation over the table).

    python benchmarks/proxy_ranking.py benchmarks/results/defense-cpu-quick-2026-12-02.json \\
        --fixed benchmarks/results/defense-cpu-quick-2026-11-24.json

For every attack of the auto run, the candidates whose defence is also a fixed column of ``--fixed`` (same
offline steps and compensation; auto's purification used its own denoiser, trained on half the sparse set)
are paired: the proxy's validation accuracy (from ``auto_choices``) against the victim's test accuracy.
Per attack: Spearman's rho, the proxy's best paired candidate and what it cost on the victim against the
victim's best paired one (the regret). Nothing is trained. Writes ``<run stem>-proxy-ranking.{json,md}``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from _common import spearman, write_json_atomic

# selection candidate name -> the fixed defence of benchmarks/defense.py that runs the same steps
PAIRS = {"none": "none", "jpeg10": "jpeg10", "grayscale": "grayscale", "grayscale+jpeg10": "jpeg10+grayscale",
         "comp-paper": "compensation", "purify100": "purification", "purify100+comp-paper": "eclipse-paper",
         "repair+purify400+comp-mid": "eclipse"}


def ranking(run: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """Per attack: the paired accuracies, Spearman's rho and the regret of the proxy's best pick."""
    rows = {}
    for attack, choice in run.get("auto_choices", {}).items():
        proxy = choice["validation_accuracy"]
        victim = {**fixed["table"].get(attack, {}), **run["table"].get(attack, {})}
        pairs = {c: (proxy[c], victim[d]) for c, d in PAIRS.items() if c in proxy and d in victim}
        if len(pairs) < 3:
            continue
        proxy_best = max(pairs, key=lambda c: pairs[c][0])
        victim_best = max(pairs, key=lambda c: pairs[c][1])
        rows[attack] = {
            "pairs": {c: {"proxy": p, "victim": v, "fixed_defence": PAIRS[c]} for c, (p, v) in pairs.items()},
            "spearman": round(spearman([p for p, _ in pairs.values()], [v for _, v in pairs.values()]), 3),
            "proxy_best": proxy_best, "victim_best": victim_best,
            "regret_points": round(100 * (pairs[victim_best][1] - pairs[proxy_best][1]), 1),
        }
    rhos = [r["spearman"] for r in rows.values()]
    return {"auto_run": run["command"], "fixed_table": fixed["command"], "per_attack": rows,
            "mean_spearman": round(sum(rhos) / len(rhos), 3) if rhos else None,
            "mean_regret_points": round(sum(r["regret_points"] for r in rows.values()) / len(rows), 1) if rows else None}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Proxy ranking vs victim ranking, paired candidates ({len(PAIRS)} defences in both tables)",
             f"auto run: `{result['auto_run']}`; fixed table: `{result['fixed_table']}`", "",
             "| attack | Spearman | proxy's best | its victim acc | victim's best | its victim acc | regret (points) |",
             "|---|---:|---|---:|---|---:|---:|"]
    for attack, r in result["per_attack"].items():
        p, v = r["pairs"][r["proxy_best"]], r["pairs"][r["victim_best"]]
        lines.append(f"| {attack} | {r['spearman']:+.2f} | {r['proxy_best']} | {100 * p['victim']:.1f} | "
                     f"{r['victim_best']} | {100 * v['victim']:.1f} | {r['regret_points']:.1f} |")
    lines.append(f"| **mean** | {result['mean_spearman']:+.2f} | | | | | {result['mean_regret_points']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a defense.py results JSON with an auto column (auto_choices)")
    parser.add_argument("--fixed", type=Path, required=True, help="a defense.py results JSON of fixed defences")
    args = parser.parse_args(argv)
    for path in (args.run, args.fixed):
        if not path.is_file():
            raise SystemExit(f"no results file at {path}")
    result = ranking(json.loads(args.run.read_text()), json.loads(args.fixed.read_text()))
    if not result["per_attack"]:
        raise SystemExit(f"{args.run} has no auto selection with at least 3 defences paired with {args.fixed}")
    stem = args.run.with_name(args.run.stem + "-proxy-ranking")
    write_json_atomic(stem.with_suffix(".json"), result)
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The loader targets of the issues (per-round ratios) and the README tables of a throughput result."""
from __future__ import annotations

import statistics
from typing import Any

from .loaders import LOADERS, PROFILE_LOADERS

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

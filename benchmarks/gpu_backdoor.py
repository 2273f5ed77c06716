"""gpu-full's extra rows: DataElixir against BadNets / Blended at the protocol's scale, and their markdown."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from _common import write_json_atomic
from defense import log

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.airbench import evaluate_tta, train_airbench, with_autocast
from eclipse_loader.evaluation.defense_registry import CROP_FLIP

if TYPE_CHECKING:
    from gpu_full import GpuHarness


def run_backdoor(h: GpuHarness, attack: str) -> dict[str, Any]:
    """DataElixir against ``attack`` at this protocol's scale (cached as backdoor-<attack>.json)."""
    from other_defenses_backdoor import TRIGGERS, elixir_sanitize

    from eclipse_loader.defenses.dataelixir import ElixirConfig
    from eclipse_loader.denoiser.io import load_denoiser
    from eclipse_loader.poisons.backdoors import attack_success_rate, poison_dataset
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig

    path = h.workdir / f"backdoor-{attack}.json"
    if path.is_file():
        return json.loads(path.read_text())
    p, e, start = h.protocol, h.protocol.elixir, time.perf_counter()
    trigger, clean_label = TRIGGERS[attack]
    poisoned = poison_dataset(h.train, trigger, target=0, ratio=e["ratio"], clean_label=clean_label, seed=h.seed)

    def fit(data: LabelledImages, seed: int) -> torch.nn.Module:
        return with_autocast(train_airbench(data, CROP_FLIP, config=p.airbench, seed=seed, device=h.device))

    def scores(model: torch.nn.Module) -> dict[str, float]:
        return {"clean_accuracy": evaluate_tta(model.model, h.test, p.airbench.tta_level, device=h.device),
                "attack_success_rate": attack_success_rate(model, h.test, trigger, 0)}

    backdoored = fit(poisoned.data, h.victim_seed)
    row: dict[str, Any] = {"attack": attack, "defense": "dataelixir", "no_defense": scores(backdoored)}
    log(f"{attack}, no defence: {row['no_defense']}")
    unet, scheduler = load_denoiser(h.denoiser(t_max=e["t_max"]))
    purifier = Purifier(unet, scheduler, PurifyConfig(t_star=None, noise_std=e["noise_std"], steps=e["steps"],
                                                      sampler="ddpm", seed=h.seed, bf16=h.purify_bf16,
                                                      repair_threshold=None), device=h.device)
    config = ElixirConfig(rounds=e["rounds"], intermediaries=e["steps"], tau=e["tau"], batch_size=e["batch_size"])
    result, info = elixir_sanitize(poisoned, purifier, backdoored, config, lambda d: fit(d, h.seed + 7))
    row["defended"] = scores(fit(result.data, h.victim_seed))
    row["defense_info"] = {**info, "noise_std": e["noise_std"], "denoiser_t_max": e["t_max"]}
    row["seconds"] = round(time.perf_counter() - start, 1)
    log(f"{attack}, dataelixir: {row['defended']} (target found: {info.get('targets')})")
    write_json_atomic(path, row)
    return row


def append_markdown(path: Path, result: dict[str, Any], backdoor: dict[str, Any], budget_hit: bool, errors: int) -> None:
    """Add the device, budget, ResNet-18 and DataElixir lines to the table's markdown file."""
    with open(path, "a") as md:
        md.write(f"\nDevice: {result['device_name']}. Stopped by the budget: {budget_hit}. Errors: {errors}.\n")
        if result["resnet18"]:
            md.write("\nResNet-18 (paper training) rows, clean test accuracy (%):\n\n| attack | defence | accuracy |\n"
                     "|---|---|---:|\n" + "".join(f"| {a} | {d} | {100 * v:.1f} |\n" for a, row in
                                                   result["resnet18"].items() for d, v in row.items()))
        if backdoor:
            md.write("\nDataElixir (airbench victim; CA = clean accuracy, ASR = attack success rate, %):\n\n"
                     "| backdoor | CA no defence | ASR no defence | CA DataElixir | ASR DataElixir | target found |\n"
                     "|---|---:|---:|---:|---:|---|\n" + "".join(
                         f"| {b} | {100 * r['no_defense']['clean_accuracy']:.1f} | "
                         f"{100 * r['no_defense']['attack_success_rate']:.1f} | {100 * r['defended']['clean_accuracy']:.1f} | "
                         f"{100 * r['defended']['attack_success_rate']:.1f} | {r['defense_info'].get('targets')} |\n"
                         for b, r in backdoor.items()))

"""Protocol ``gpu-full``: the attack x defence table at full CIFAR-10 scale with a 94%-class victim.

    python benchmarks/gpu_full.py --protocol gpu-full --data .gpu/cifar10.npz --budget-minutes 9   # the lent GPU
    python benchmarks/gpu_full.py --protocol gpu-full-dry --threads 2                               # CPU rehearsal
    (``benchmarks/defense.py --protocol gpu-full ...`` runs this too; ``benchmarks/gpu_full.sh`` is the GPU command)

Protocol (`protocols.GPU_PROTOCOLS`): all 50,000 training images poisoned; the 2,000-image sparse clean
set (the denoiser's training set) drawn class-balanced from the TEST split, and every score taken on the
other 8,000 test images (the paper's arrangement); victim: the airbench94-style network
(`eclipse_loader.evaluation.airbench`, 10 epochs, batch 1024, TTA), every defence keeping airbench's own
flip + 2-px translate and adding its compensation; attacks crafted on the device, bf16 autocast (EM
against ResNet-18, its published setting, 10 PGD steps x up to 10 rounds; TAP 100 steps against an airbench
network trained on the clean set); the model-free poisons, JPEG and outlier repair in CPU worker processes
beside the GPU; denoiser: the ``small`` preset, 4,000 steps at batch 256 on t <= 399, which serves both
eclipse-paper (t* = 100) and eclipse (t* = 400), both purifying with 2 network calls (the paper's full
100-step chain does not fit the budget) in bf16, batch 2048; DataElixir against BadNets and Blended (10%
dirty label, target 0) with a second small denoiser trained on t <= 750 (noise std 0.3, as at CPU scale),
airbench as the suspicious, benign and final model.

Order: the clean row, every attack undefended, then one defence column at a time in ``--defenses`` order
(default none, jpeg10, eclipse, grayscale, eclipse-paper, and auto once `eclipse_loader.evaluation.defense_registry`
registers it), then DataElixir, then with ``--resnet18`` ResNet-18 rows (the paper's 80 epochs; none and
eclipse on clean data and AR). ``--budget-minutes`` stops before the next cell once the budget
is spent. Every finished cell is appended to ``cells.jsonl`` in the work dir and the JSON / markdown / PNG
are rewritten after it, so a cut-off run keeps every finished cell; a rerun resumes from the cache.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from _common import RESULTS, command_line
from defense import ATTACKS, DATA, REGISTRY, Harness, log, markdown_table, summarise, write_outputs
from gpu_backdoor import append_markdown, run_backdoor
from gpu_prefetch import MODEL_FREE, Prefetcher, chunked, load_npz, offline_path, save_npz
from protocols import GPU_PROTOCOLS, GpuProtocol

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.airbench import autocast_factory, train_airbench, train_airbench_victim, with_autocast
from eclipse_loader.evaluation.defense_registry import AUTO, DEFENSES, Defense, batch_transform
from eclipse_loader.evaluation.victim import VictimResult, resnet18_cifar, train_victim

ORDER = ("none", "jpeg10", "eclipse", "grayscale", "eclipse-paper", AUTO)
BACKDOORS = ("badnets", "blended")
RESNET = "@resnet18"
BACKDOOR_RESERVE_S = 150.0  # estimated on an H200: 3 airbench trainings, 4 denoiser calls per image, a denoiser


class GpuHarness(Harness):
    """`Harness` with the airbench victim, bf16 purification and per-cell error capture."""

    def __init__(self, protocol: GpuProtocol, *args: Any, **kwargs: Any) -> None:
        super().__init__(protocol, *args, **kwargs)
        self.purify_batch = protocol.purify_batch
        self.purify_bf16 = protocol.purify_bf16 and str(self.device).startswith("cuda")
        self.errors: list[dict[str, str]] = []
        self.prefetch: Optional[Prefetcher] = None

    def _victim_factory(self, name: str) -> Callable[[int], torch.nn.Module]:
        """Crafting networks, all channels-last under bf16 autocast on CUDA."""
        if name == "airbench94":
            return autocast_factory(self.train, self.protocol.airbench.widths)
        base = super()._victim_factory(name)
        return lambda num_classes: with_autocast(base(num_classes))

    def fit_model(self, data: LabelledImages, augment: Any, seed: int) -> torch.nn.Module:
        return train_airbench(data, augment, config=self.protocol.airbench, seed=seed, device=self.device)

    def clean_model(self) -> torch.nn.Module:
        """TAP's crafting model: airbench trained on the clean training set (cached), under autocast."""
        path = self.workdir / "tap_crafting_model.pt"
        if path.is_file():
            model = autocast_factory(None, self.protocol.airbench.widths)(10)
            model.model.load_state_dict(torch.load(path, weights_only=True))
            return model.to(self.device)
        net = self.fit_model(self.train, DEFENSES["none"].augment, self.seed)
        torch.save(net.state_dict(), path)
        return with_autocast(net)

    def start_prefetch(self, attacks: list[str], workers: int) -> None:
        """Craft the model-free poisons and their JPEG / outlier-repaired sets in ``workers`` processes."""
        if workers < 1:
            return
        self.prefetch = Prefetcher(self.workdir, self.seed, workers)
        clean = self.workdir / "clean-train.npz"
        if not clean.is_file():
            save_npz(clean, self.train)
        self.prefetch.submit("none", clean, craft=False)
        for attack in [a for a in attacks if a in MODEL_FREE]:
            self.prefetch.submit(attack, clean, craft=True)

    def poisoned(self, attack: str) -> LabelledImages:
        path = self.workdir / "poisons" / f"{attack}.npz"
        if self.prefetch is not None and attack != "none":
            self.prefetch.wait_for(attack, path)
        data = super().poisoned(attack)
        if self.prefetch is not None and attack not in MODEL_FREE and attack != "none":
            self.prefetch.submit(attack, path, craft=False)  # its JPEG / repaired sets, beside the GPU
        return data

    def offline_functions(self, attack: str, defense: Defense, after: tuple[str, ...]) -> dict[str, Callable]:
        """Offline steps read from the prefetched sets where a worker made them, else run over all cores."""
        steps = super().offline_functions(attack, defense, after)
        for i, name in enumerate(defense.offline):
            if name != "purify":
                steps[name] = self._cached_step(attack, tuple(defense.offline[:i + 1]), steps[name])
        return steps

    def _cached_step(self, attack: str, chain: tuple[str, ...], fn: Callable) -> Callable:
        path = offline_path(self.workdir, attack, chain)

        def run(data: LabelledImages) -> LabelledImages:
            if self.prefetch is not None:
                self.prefetch.wait_for(attack, path)
                for key, seconds in self.prefetch.timings.items():
                    self.timings.setdefault(key, seconds)
            if path.is_file():
                return load_npz(path)
            out = chunked(fn, data)
            save_npz(path, out)
            return out

        return run

    def score_victim(self, defended: LabelledImages, defense: Defense) -> VictimResult:
        if defense.name.endswith(RESNET):
            return train_victim(defended, self.test, defense.augment, training=self.protocol.resnet_training,
                                seed=self.victim_seed, model_factory=resnet18_cifar, device=self.device)
        return train_airbench_victim(defended, self.test, defense.augment, config=self.protocol.airbench,
                                     seed=self.victim_seed, device=self.device,
                                     batch_transform=batch_transform(defense, self.victim_seed))

    def try_cell(self, attack: str, defense: Defense) -> None:
        try:
            self.run_cell(attack, defense)
        except Exception as exc:  # one broken cell must not cost the others: recorded, and the run exits 1
            log(f"{attack} x {defense.name} FAILED: {exc!r}")
            self.errors.append({"attack": attack, "defense": defense.name, "error": repr(exc),
                                "traceback": traceback.format_exc()[-2000:]})


def plan(attacks: list[str], defenses: list[str], resnet18: bool) -> list[tuple[str, str]]:
    """The cells in the order they run: the clean row, every attack undefended, then one defence at a time
    in ``defenses`` order (so a budget cut drops whole trailing columns); within a defence the GPU-crafted
    attacks first and AR (the slowest to craft on a CPU) last, so the prefetch workers craft the model-free
    poisons while the GPU is busy."""
    ordered = sorted(attacks, key=lambda a: (a in MODEL_FREE, a == "ar"))
    order = [("none", "none")]
    for d in ["none", *[d for d in defenses if d != "none"]]:
        order += [(a, d) for a in ["none", *ordered] if (a, d) not in order]
    if resnet18:
        order += [(a, d + RESNET) for a in ("none", attacks[0]) for d in ("none", "eclipse")]
    return order


def report(h: GpuHarness, attacks: list[str], defenses: list[str], args: argparse.Namespace, started: float,
           backdoor: dict[str, Any], budget_hit: bool) -> Path:
    result = summarise(h, attacks, [], defenses, args, started, REGISTRY)
    result["device_name"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu (no CUDA device)"
    result["resnet18"] = {a: {d[:-len(RESNET)]: c["accuracy"] for (a2, d), c in h.cells.items() if a2 == a
                              and d.endswith(RESNET)} for a in {a for a, d in h.cells if d.endswith(RESNET)}}
    result["dataelixir"] = backdoor
    result["errors"] = h.errors
    result["stopped_by_budget"] = budget_hit
    result["budget_minutes"] = args.budget_minutes
    if args.label:
        result["label"] = args.label
    result["protocol_notes"] = " ".join(__doc__.split("Protocol (", 1)[1].split("Order:", 1)[0].split())
    path = write_outputs(result, args.out, suffix=args.suffix, stem=args.stem or None)
    if args.copy_to is not None:
        args.copy_to.mkdir(parents=True, exist_ok=True)
        for name in (h.cells_path, h.timings_path):
            if name.is_file():
                shutil.copy(name, args.copy_to / name.name)
    append_markdown(path.with_suffix(".md"), result, backdoor, budget_hit, len(h.errors))
    return path


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", choices=sorted(GPU_PROTOCOLS), default="gpu-full")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--defenses", default=",".join(ORDER),
                    help="run in this order, one column at a time (default: the headline comparison first)")
    ap.add_argument("--backdoors", default=",".join(BACKDOORS), help="DataElixir rows ('' for none)")
    ap.add_argument("--resnet18", action="store_true", help="also ResNet-18 rows (paper training) after the rest")
    ap.add_argument("--budget-minutes", type=float, default=None, help="start no new cell after this long")
    ap.add_argument("--data", type=Path, default=DATA, help="CIFAR-10 npz (train_x, train_y, test_x, test_y)")
    ap.add_argument("--splits", type=Path, default=None, help="an npz of train/sparse/test splits instead")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--suffix", default="", help="appended to the output file stem (e.g. -dryrun-cpu)")
    ap.add_argument("--stem", default="", help="output file stem instead of defense-<protocol>-<date><suffix>")
    ap.add_argument("--label", default="", help="a note stored in the JSON (e.g. 'CPU dry run, numbers meaningless')")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--prefetch-workers", type=int, default=None,
                    help="processes crafting model-free poisons and JPEG/repair sets beside the GPU "
                         "(default: cores - 4 on CUDA, 0 on CPU)")
    ap.add_argument("--copy-to", type=Path, default=None, help="also copy cells.jsonl/timings.json here after each cell")
    args = ap.parse_args(argv)
    args.command_line = command_line().replace(" --report-only", "")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    protocol = GPU_PROTOCOLS[args.protocol]
    attacks, defenses = [a for a in args.attacks.split(",") if a], [d for d in args.defenses.split(",") if d]
    known = ATTACKS
    for kind, chosen, names in (("attack", attacks, known), ("defense", defenses, tuple(REGISTRY)),
                                ("backdoor", [b for b in args.backdoors.split(",") if b], BACKDOORS)):
        if [c for c in chosen if c not in names]:
            raise SystemExit(f"unknown {kind}(s) {[c for c in chosen if c not in names]}; choose from {list(names)}")
    if protocol.name == "gpu-full" and not args.device.startswith("cuda"):
        raise SystemExit("protocol gpu-full needs a CUDA device (--device cuda); rehearse on a CPU with gpu-full-dry")
    started = time.perf_counter()
    h = GpuHarness(protocol, args.workdir or Path("bench-work") / f"defense-{protocol.work_name}", args.device, args.seed,
                   splits=args.splits, data=args.data)
    log(f"protocol {protocol.name} on {args.device}: {len(h.train)} training, {len(h.sparse)} sparse, "
        f"{len(h.test)} test images; {len(h.cells)} cells already done")
    workers = args.prefetch_workers if args.prefetch_workers is not None else (
        max(0, len(os.sched_getaffinity(0)) - 4) if args.device.startswith("cuda") else 0)
    if not args.report_only:
        h.start_prefetch(attacks, workers)
    backdoor = {b: json.loads(p.read_text()) for b in BACKDOORS if (p := h.workdir / f"backdoor-{b}.json").is_file()}
    budget_hit = False

    def over_budget(reserve_s: float = 0.0) -> bool:
        """Past the budget, or less than ``reserve_s`` of it left."""
        return (args.budget_minutes is not None
                and time.perf_counter() - started + reserve_s > 60 * args.budget_minutes)

    if not args.report_only:
        for attack, name in plan(attacks, defenses, args.resnet18):
            if (attack, name) in h.cells:
                continue
            if over_budget():
                budget_hit = True
                break
            base = REGISTRY[name.removesuffix(RESNET)]
            h.try_cell(attack, replace(base, name=name) if name.endswith(RESNET) else base)
            report(h, attacks, defenses, args, started, backdoor, budget_hit)
        for b in [b for b in args.backdoors.split(",") if b and b not in backdoor]:
            if budget_hit or over_budget(BACKDOOR_RESERVE_S):  # a DataElixir row takes minutes: start it only
                budget_hit = True                                # with that much budget left
                break
            try:
                backdoor[b] = run_backdoor(h, b)
            except Exception as exc:
                log(f"dataelixir x {b} FAILED: {exc!r}")
                h.errors.append({"attack": b, "defense": "dataelixir", "error": repr(exc),
                                 "traceback": traceback.format_exc()[-2000:]})
            report(h, attacks, defenses, args, started, backdoor, budget_hit)
    if h.prefetch is not None:
        h.prefetch.close()
    path = report(h, attacks, defenses, args, started, backdoor, budget_hit)
    log(f"wrote {path} ({len(h.cells)} cells, {len(h.errors)} errors{', budget reached' if budget_hit else ''})")
    print(markdown_table(json.loads(path.read_text())), flush=True)
    return 1 if h.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The attack x defence table: clean test accuracy of a victim trained on each poisoned, defended set.

    python benchmarks/defense.py --protocol cpu-quick            # ~1 hour on 2 CPU cores
    python benchmarks/defense.py --protocol paper --device cuda  # ResNet-18, all 50k images (GPU)

Protocols (see PROTOCOLS): ``cpu-quick`` trains a small fast CNN on a 10k class-balanced subset of the
CIFAR-10 training split; ``paper`` is ECLIPSE's (ResNet-18, all 50k images, SGD lr 0.1 constant, momentum
0.9, batch 128, 80 epochs, crop + flip, last-epoch accuracy). The sparse clean set that trains the
denoiser is held out of both the poisoned training set and the test set: cpu-quick takes it from the
unused part of the training split, paper from the test split (scoring then uses the other 8,000 test
images).

Everything is cached under ``--workdir`` (poisoned sets, the denoiser, purified sets) and every finished
cell is appended to ``cells.jsonl`` there, so a crashed or interrupted run continues where it stopped.
The result goes to ``benchmarks/results/defense-<protocol>-<date>.json`` with a markdown table and a
bar plot next to it.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional

import torch

# every name below is importable from here (ablation.py, gpu_full.py, gpu_backdoor.py, select_*.py and the tests do)
from _common import RESULTS, command_line, log  # noqa: F401
from defense_harness import ADAPTIVE, ATTACKS, PURIFY_BATCH, REGISTRY, Harness  # noqa: F401
from defense_report import bar_plot, markdown_table, summarise, write_outputs  # noqa: F401
from defense_splits import DATA, cached, load_splits, save_npz, save_splits  # noqa: F401
from protocols import GPU_PROTOCOLS, PROTOCOLS, Protocol  # noqa: F401

__all__ = ["ADAPTIVE", "ATTACKS", "DATA", "GPU_PROTOCOLS", "PROTOCOLS", "PURIFY_BATCH", "REGISTRY", "Harness", "Protocol",
           "bar_plot", "cached", "load_splits", "log", "main", "markdown_table", "parse_args", "save_npz", "save_splits",
           "summarise", "write_outputs"]

# the defences an adaptive row runs against unless --adaptive-defenses names them
DEFAULT_ADAPTIVE_DEFENSES = "none,compensation,eclipse-paper,eclipse"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="cpu-quick")
    parser.add_argument("--attacks", default=",".join(ATTACKS), help="comma list from " + ",".join(ATTACKS))
    parser.add_argument("--adaptive", default="em-adaptive-compensation",
                        help="adaptive attacks (rows outside the means), comma list from " + ",".join(ADAPTIVE)
                        + "; '' for none")
    parser.add_argument("--defenses", default=",".join(d for d in REGISTRY if d != "auto-best"),
                        help="comma list from " + ",".join(REGISTRY) + " (auto: chosen per cell on the sparse set, "
                        "eclipse_loader.select; auto-best: the same with tie_break='best'), or candidate:NAME (one "
                        "selection candidate, e.g. candidate:repair+purify400, purified with auto's denoiser)")
    parser.add_argument("--clean-defenses", default=None,
                        help="defences run on the clean row (default: all of --defenses); e.g. 'none' when only the "
                             "ratio to clean is wanted and the other clean cells are measured already")
    parser.add_argument("--adaptive-defenses", default=None,
                        help="defences the adaptive attacks are run against, all in --defenses (default: those of "
                             f"{DEFAULT_ADAPTIVE_DEFENSES} that --defenses has)")
    parser.add_argument("--workdir", type=Path, default=None, help="cache dir (default bench-work/defense-<protocol>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--victim-seed", type=int, default=None,
                        help="seed of the victims alone (default: --seed); data, poisons and purification keep "
                             "--seed, so the cached poisons and purified sets are reused; own cells file and outputs")
    parser.add_argument("--report-only", action="store_true",
                        help="write the JSON/markdown/plot from the cells already in --workdir; run nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--data", type=Path, default=DATA,
                        help="CIFAR-10-layout npz (train_x/train_y/test_x/test_y; default ../shared/data/cifar10.npz)")
    args = parser.parse_args(argv)
    # the command that reproduces the table (a --report-only rerun only re-renders it)
    args.command_line = command_line().replace(" --report-only", "")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--protocol")
    if pre.parse_known_args(argv)[0].protocol in GPU_PROTOCOLS:
        import gpu_full  # the airbench victim's protocols have their own runner (and options)

        return gpu_full.main(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = PROTOCOLS[args.protocol]
    attacks = [a for a in args.attacks.split(",") if a]
    adaptive = [a for a in args.adaptive.split(",") if a]
    defenses = [d for d in args.defenses.split(",") if d]
    clean_defenses = defenses if args.clean_defenses is None else [d for d in args.clean_defenses.split(",") if d]
    if not set(clean_defenses) <= set(defenses):
        raise SystemExit(f"--clean-defenses {sorted(set(clean_defenses) - set(defenses))} are not in --defenses")
    if args.adaptive_defenses is None:
        adaptive_defenses = [d for d in DEFAULT_ADAPTIVE_DEFENSES.split(",") if d in defenses]
    else:
        adaptive_defenses = [d for d in args.adaptive_defenses.split(",") if d]
        if not set(adaptive_defenses) <= set(defenses):
            raise SystemExit(f"--adaptive-defenses {sorted(set(adaptive_defenses) - set(defenses))} are not in "
                             "--defenses")
    for name, known in (("attack", ATTACKS), ("adaptive attack", ADAPTIVE), ("defense", tuple(REGISTRY))):
        chosen = {"attack": attacks, "adaptive attack": adaptive, "defense": defenses}[name]
        unknown = [c for c in chosen if c not in known and not (name == "defense" and REGISTRY.knows(c))]
        if unknown:
            raise SystemExit(f"unknown {name}(s) {unknown}; choose from {list(known)}")
    started = time.perf_counter()
    harness = Harness(protocol, args.workdir or Path("bench-work") / f"defense-{protocol.work_name}", args.device, args.seed,
                      victim_seed=args.victim_seed, data=args.data)
    log(f"protocol {protocol.name}: {len(harness.train)} training, {len(harness.sparse)} sparse, "
        f"{len(harness.test)} test images; {len(harness.cells)} cells already done")
    if args.report_only:
        path = write_outputs(summarise(harness, attacks, adaptive, defenses, args, started), args.out)
        log(f"wrote {path} from {len(harness.cells)} finished cells")
        return 0
    for attack in ["none", *attacks, *adaptive]:
        for name in adaptive_defenses if attack in adaptive else clean_defenses if attack == "none" else defenses:
            harness.run_cell(attack, REGISTRY[name])  # REGISTRY builds candidate:NAME entries on demand
        path = write_outputs(summarise(harness, attacks, adaptive, defenses, args, started), args.out)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

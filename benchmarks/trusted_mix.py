"""What "also train on the trusted images" is worth to the victim, measured per row.

    python benchmarks/trusted_mix.py --threads 2 \
        --cells none:none,tap:jpeg10,cuda:chroma4,em:chroma-swap     # ~5 min on 2 CPU cores (8 victims)

`select_defense` can recommend mixing the trusted images into the training set (the report's "Also training
on the trusted images"); the harness cannot run that (its defences map the training set alone), so this
script measures it beside the harness. Each cell ``ATTACK:CANDIDATE`` trains the cpu-quick victim (victim
seed 0 unless ``--victim-seed``) twice on the harness's cached poison with the candidate's offline steps and
compensation: once on the 10k defended images, once with the protocol's 2,000 sparse (trusted) images
mixed in before the defence, as the selection's proxy mixes them. Candidates that purify or add the RSK-FF
augmentation are refused (the purified sets and the batch augmentation live in the harness). The poisons
come from ``--workdir`` (a `benchmarks/defense.py` work dir of the same protocol; a missing poison is an
error naming the file).

The mixed victim sees 20% more images and steps, so its gain is partly more data: the clean row measures
that part (``none:none``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, log, write_result
from defense import DATA, PROTOCOLS, Harness

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.defense_registry import apply_offline, candidate_defense, named_candidate, offline_steps
from eclipse_loader.evaluation.victim import VICTIMS, train_victim


def parse_cells(text: str) -> list[tuple[str, str]]:
    """``"tap:jpeg10,none:none"`` as [(attack, candidate name)]; ValueError naming the bad entry."""
    cells = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        attack, sep, candidate = entry.partition(":")
        if not sep or not attack or not candidate:
            raise ValueError(f"--cells: {entry!r} is not ATTACK:CANDIDATE")
        cells.append((attack, candidate))
    if not cells:
        raise ValueError("--cells: no cells given")
    return cells


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="cpu-quick-proxy2k", choices=["cpu-quick", "cpu-quick-proxy2k", "smoke"])
    parser.add_argument("--cells", default="none:none,tap:jpeg10,cuda:chroma4,em:chroma-swap")
    parser.add_argument("--workdir", default=None, help="the harness work dir (default bench-work/defense-PROTOCOL)")
    parser.add_argument("--data", type=Path, default=DATA, help="the CIFAR-10 archive the protocol's splits come from")
    parser.add_argument("--victim-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None,
                        help="results JSON (default benchmarks/results/trusted-mix-PROTOCOL-DATE.json)")
    args = parser.parse_args()
    try:
        cells = parse_cells(args.cells)
        defenses = {name: candidate_defense(named_candidate(name), name=f"candidate:{name}") for _, name in cells}
    except (KeyError, ValueError) as error:
        parser.error(str(error).strip("'\""))
    refused = [name for name, d in defenses.items() if d.purifies or d.extra_augment is not None]
    if refused:
        parser.error(f"--cells: {', '.join(refused)} purify or augment per batch; this script runs offline "
                     "steps and the compensation only")
    if not args.data.is_file():
        parser.error(f"--data {args.data}: no such file")
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = PROTOCOLS[args.protocol]
    workdir = Path(args.workdir) if args.workdir else Path("bench-work") / f"defense-{protocol.work_name}"
    missing = [str(workdir / "poisons" / f"{a}.npz") for a, _ in cells
               if a != "none" and not (workdir / "poisons" / f"{a}.npz").is_file()]
    if missing:
        parser.error(f"no cached poison {', '.join(missing)} (run benchmarks/defense.py with this --workdir first)")
    harness = Harness(protocol, workdir, "cpu", 0, data=args.data)  # its splits and its cached poisons
    sparse, test = harness.sparse, harness.test
    steps = offline_steps()
    out = Path(args.out) if args.out else RESULTS / f"trusted-mix-{args.protocol}-{time.strftime('%Y-%m-%d')}.json"
    rows: list[dict[str, object]] = []
    for attack, name in cells:
        data, defense = harness.poisoned(attack), defenses[name]
        mixed = LabelledImages(np.concatenate([data.images, sparse.images]),
                               np.concatenate([data.labels, sparse.labels]), data.num_classes)
        row: dict[str, object] = {"attack": attack, "candidate": name, "trusted_images": len(sparse)}
        for key, source in (("alone", data), ("with_trusted", mixed)):
            start = time.perf_counter()
            result = train_victim(apply_offline(defense, source, steps), test, defense.augment,
                                  training=protocol.training, seed=args.victim_seed,
                                  model_factory=VICTIMS[protocol.victim], device="cpu")
            row[key] = result.test_accuracy
            log(f"{attack:>16} x {name:<14} {key:<13} {100 * result.test_accuracy:5.1f}%  "
                f"({len(source)} images, {time.perf_counter() - start:.0f} s)")
        rows.append(row)
        write_result(out, {"protocol": args.protocol, "victim_seed": args.victim_seed, "cells": rows})
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Wall time of a full selection (every default candidate) for the cpu-quick 10k-image training set.

    python benchmarks/select_timing.py --budget-minutes 9 --threads 2

A small-preset denoiser (t <= 599, so every t* up to 600 is served) is trained for only ``--denoiser-steps``
steps on half the sparse set: its weights are far from converged, so the *choice* here means nothing,
but the purification cost per image (what the timing needs) is that of the real small denoiser. The
training set is the cpu-quick CUDA-poisoned set (any set of that size costs the same). Reports the proxy
the budget allowed, the estimate and the measured wall time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import RESULTS, command_line, machine_info, write_json_atomic
from defense import PROTOCOLS, load_splits

from eclipse_loader import poisons
from eclipse_loader.evaluation.defense_registry import split_sparse
from eclipse_loader.select.candidates import default_candidates
from eclipse_loader.select.offline import DenoiserPurify
from eclipse_loader.select.proxy import ProxySettings
from eclipse_loader.select.run import select_defense


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=9.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--denoiser-steps", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/select-timing"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from eclipse_loader.adapters.lightning_denoiser import train_denoiser

    train, sparse, _ = load_splits(PROTOCOLS["cpu-quick"], seed=0)
    poisoned = poisons.convolution_based(train, seed=0)
    _, denoiser_part = split_sparse(sparse, seed=0)
    denoiser = args.workdir / "denoiser-t599"
    if not (denoiser / "denoiser.json").is_file():
        train_denoiser(denoiser_part, "small", denoiser, max_steps=args.denoiser_steps, batch_size=32, t_max=599,
                       seed=0, progress=False, accelerator="cpu")
    purify = DenoiserPurify(denoiser, seed=0)
    candidates = default_candidates()
    start = time.perf_counter()
    selection = select_defense(poisoned, sparse, purify, args.workdir / f"run-b{args.budget_minutes:g}",
                               candidates=candidates, proxy=ProxySettings(), seed=0,
                               budget_minutes=args.budget_minutes, denoiser_images=denoiser_part.images,
                               log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}", flush=True))
    wall = time.perf_counter() - start
    result = {"machine": machine_info(), "command": command_line(), "train_images": len(poisoned),
              "candidates": len(candidates), "plan": selection.plan.to_dict(), "wall_minutes": round(wall / 60, 2),
              "sizes": selection.sizes, "per_candidate_seconds": {
                  r.name: round(r.offline_seconds + r.train_seconds, 1) for r in selection.results},
              "sum_candidate_minutes": round(sum(r.offline_seconds + r.train_seconds
                                                 for r in selection.results) / 60, 2),
              "chosen": selection.chosen.name,
              "note": "denoiser trained for only --denoiser-steps steps: timing only, the choice is meaningless; "
                      "wall_minutes is this invocation's (a resumed run reuses cached candidates), "
                      "sum_candidate_minutes the compute of every candidate over all invocations"}
    path = RESULTS / f"select-timing-cpu-quick-10k-{time.strftime('%Y-%m-%d')}.json"
    write_json_atomic(path, result)
    print(f"wall {wall / 60:.1f} min (estimate {selection.plan.estimated_minutes:.1f}, budget {args.budget_minutes}); "
          f"proxy {selection.plan.proxy.images} x {selection.plan.proxy.epochs}; wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fidelity of the selection's proxy: does its ranking of defences match the real victim's (cpu-quick table)?

    python benchmarks/select_fidelity.py --attack lsp      # ~8 min on one core (5 defences x 2000 x 30)

The cpu-quick protocol's splits and model-free poisons are rebuilt exactly as `benchmarks/defense.py`
makes them (same seed); the proxy trains on a 2,000-image class-balanced subset of the poisoned set and
is scored on the protocol's 2,000-image sparse set (no denoiser is involved, so all of it validates).
Only defences without purification are compared (no denoiser is trained here): none, jpeg10, grayscale,
jpeg10+grayscale and compensation (paper level). The victim's numbers come from the committed
``defense-cpu-quick-2026-11-24.json``; the output is Spearman's rank correlation per attack.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, command_line, machine_info, spearman, write_json_atomic
from defense import PROTOCOLS, load_splits

from eclipse_loader import poisons
from eclipse_loader.select.candidates import Candidate
from eclipse_loader.select.proxy import ProxySettings
from eclipse_loader.select.run import select_defense

TABLE = RESULTS / "defense-cpu-quick-2026-11-24.json"
PAIRS = {"none": Candidate(), "jpeg10": Candidate(jpeg=10), "grayscale": Candidate(grayscale=True),
         "jpeg10+grayscale": Candidate(grayscale=True, jpeg=10), "compensation": Candidate(compensation="paper")}
MAKERS = {"ar": poisons.autoregressive, "lsp": poisons.lsp, "ops": poisons.one_pixel_shortcut,
          "cuda": poisons.convolution_based, "classwise-noise": poisons.classwise_noise}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attack", choices=sorted(MAKERS), required=True)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/select-fidelity"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train, sparse, _ = load_splits(PROTOCOLS["cpu-quick"], seed=0)
    poisoned = MAKERS[args.attack](train, seed=0)
    selection = select_defense(poisoned, sparse, None, args.workdir / args.attack, candidates=list(PAIRS.values()),
                               proxy=ProxySettings(images=args.images, epochs=args.epochs), seed=0, noise_seeds=0,
                               try_trusted_mix=False, log=lambda m: print(f"[{time.strftime('%H:%M:%S')}] {m}",
                                                                           flush=True))
    victim = json.loads(TABLE.read_text())["table"][args.attack]
    names = list(PAIRS)
    proxy_acc = [selection.result(PAIRS[n].name).accuracy for n in names]
    victim_acc = [victim[n] for n in names]
    result = {
        "attack": args.attack, "machine": machine_info(), "command": command_line(),
        "proxy": selection.plan.proxy.to_dict(), "validation_images": selection.sizes["validation"],
        "proxy_accuracy": dict(zip(names, proxy_acc)), "victim_accuracy_cpu_quick": dict(zip(names, victim_acc)),
        "proxy_train_accuracy": {n: selection.result(PAIRS[n].name).proxy_train_accuracy for n in names},
        "spearman": spearman(proxy_acc, victim_acc),
        "proxy_choice": selection.chosen.name, "victim_best": max(victim, key=lambda d: victim[d] if d in PAIRS else -1),
        "seconds": round(time.perf_counter() - start, 1),
    }
    path = RESULTS / f"select-fidelity-cpu-quick-{args.attack}-{time.strftime('%Y-%m-%d')}.json"
    write_json_atomic(path, result)
    print(json.dumps({k: result[k] for k in ("proxy_accuracy", "victim_accuracy_cpu_quick", "spearman",
                                              "proxy_choice", "seconds")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Why grayscale costs a short-trained victim so much on clean data: train/test colour mismatch, measured.

    python benchmarks/colour_mismatch.py --threads 2      # ~2 min on 2 CPU cores (3 victims x ~35 s)

The cpu-quick victim (its protocol's 10k clean training images, 6 epochs, victim seed 0) is trained on
colour images, on grayscale images and on chroma-swapped images (`eclipse_loader.select.colour`), and scored
on the colour test set and on its grayscale version. If the grayscale victim scores far better on grayscale
test images than on colour ones, its loss on colour images is the mismatch (untrained colour weights), which
the chroma swap avoids by training on natural-looking colour that carries no label information.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from _common import RESULTS, log, write_result
from defense import PROTOCOLS, load_splits

from eclipse_loader.data.images import LabelledImages
from eclipse_loader.evaluation.baselines import grayscale
from eclipse_loader.evaluation.defense_registry import CROP_FLIP
from eclipse_loader.evaluation.victim import VICTIMS, evaluate, train_classifier
from eclipse_loader.select.colour import swap_chroma

TRAININGS = {"colour": lambda d: d, "grayscale": grayscale, "chroma-swap": swap_chroma}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocol", default="cpu-quick", choices=["cpu-quick", "cpu-wide"])
    parser.add_argument("--victim-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None,
                        help="results JSON (default benchmarks/results/colour-mismatch-PROTOCOL-DATE.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    protocol = PROTOCOLS[args.protocol]
    train, _, test = load_splits(protocol, 0)
    gray_test = grayscale(test)
    table: dict[str, dict[str, float]] = {}
    for name, transform in TRAININGS.items():
        start = time.perf_counter()
        model = train_classifier(transform(train), CROP_FLIP, training=protocol.training, seed=args.victim_seed,
                                 model_factory=VICTIMS[protocol.victim], device="cpu")
        table[name] = {"colour_test": evaluate(model, test, device="cpu"),
                       "grayscale_test": evaluate(model, gray_test, device="cpu")}
        log(f"trained on {name:<12} colour test {100 * table[name]['colour_test']:.1f}%  grayscale test "
            f"{100 * table[name]['grayscale_test']:.1f}%  ({time.perf_counter() - start:.0f} s)")
    out = Path(args.out) if args.out else RESULTS / f"colour-mismatch-{args.protocol}-{time.strftime('%Y-%m-%d')}.json"
    write_result(out, {"protocol": args.protocol, "victim_seed": args.victim_seed, "test_accuracy": table})
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

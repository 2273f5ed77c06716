"""`eclipse-loader demo`: the whole ECLIPSE pipeline, end to end, on the embedded CIFAR-10 sample.

Poison the 2,000 training images (class-wise patch colours, LSP-style, a model-free poison), train a denoiser on
the 500 trusted images, purify the poisoned set, then train the same small victim twice, without
defence and with ECLIPSE (purified data + compensation), plus once on the clean images for reference,
and print the test accuracies (500 test images). Everything lands in ``--workdir``; finished steps are reused when the command is re-run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..data.embedded import load_embedded
from ..poisons.model_free import classwise_noise, classwise_patches
from ..evaluation.victim import train_victim
from ..loading.config import AugmentConfig
from ..recipes import RECIPES, get_recipe
from ..storage.beton import read_beton
from . import steps_arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="poison, purify and train on the embedded CIFAR-10 sample; compare accuracies",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", default="eclipse-demo", help="where the denoiser, betons and results go")
    parser.add_argument("--preset", default="small", help="denoiser preset (tiny, small, paper)")
    parser.add_argument("--denoiser-steps", type=int, default=300, help="denoiser training steps")
    parser.add_argument("--denoiser-lr", type=float, default=1e-3, help="denoiser learning rate")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="defence settings: 'default' (outlier repair, t*=400, 2 steps, mild compensation) or 'paper'")
    parser.add_argument("--t-star", type=int, default=None, help="purification noise level (timestep of 4000; default: the recipe's)")
    parser.add_argument("--purify-steps", type=steps_arg, default=None,
                        help="reverse steps of the purification, or 'full' (default: the recipe's)")
    parser.add_argument("--epochs", type=int, default=12, help="victim training epochs")
    parser.add_argument("--epsilon", type=float, default=8 / 255, help="poison L-inf budget in [0,1] units")
    parser.add_argument("--poison", choices=["patches", "noise"], default="patches",
                        help="patches: class-wise 8x8 patch colours (LSP-style); noise: class-wise per-pixel noise (URP-style)")
    parser.add_argument("--no-clean-reference", dest="clean_reference", action="store_false",
                        help="skip the third victim trained on the clean images")
    parser.add_argument("--ablation", action="store_true",
                        help="also train with compensation only and with purification only (two more victims)")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(func=run)


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def run(args: argparse.Namespace) -> int:
    from ..denoiser.io import weights_path
    from ..denoiser.training import train_denoiser
    from ..purify.preview import save_preview
    from ..purify.run import purify_dataset

    recipe = get_recipe(args.recipe).with_overrides(t_star=args.t_star)
    args.t_star = recipe.t_star
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    train, trusted, test = (load_embedded(s) for s in ("train", "trusted", "test"))
    poison = classwise_patches if args.poison == "patches" else classwise_noise
    poisoned = poison(train, args.epsilon, seed=args.seed)
    print(f"embedded CIFAR-10 sample: {len(train)} train (poison: class-wise {args.poison}, L-inf {args.epsilon * 255:.0f}/255), "
          f"{len(trusted)} trusted clean, {len(test)} test")

    t_max = max(recipe.denoiser_t_max, args.t_star - 1)
    denoiser = work / f"denoiser-{args.preset}-{args.denoiser_steps}-t{t_max}"
    total = 4 + int(args.clean_reference) + 2 * int(args.ablation)
    start = _step(f"1/{total} train the {args.preset} denoiser on the {len(trusted)} trusted images ({args.denoiser_steps} steps)")
    if weights_path(denoiser).exists():
        print(f"reusing {denoiser}")
    else:
        train_denoiser(trusted, args.preset, denoiser, max_steps=args.denoiser_steps, batch_size=32, lr=args.denoiser_lr, t_max=t_max,
                       ema_decay=0.995, seed=args.seed, accelerator="cpu", progress=True)
    timings["denoiser_training_s"] = time.perf_counter() - start

    config = recipe.purify_config(steps=args.purify_steps, seed=args.seed)
    steps = "all" if config.steps is None else config.steps
    start = _step(f"2/{total} purify the poisoned set (t*={args.t_star}, {steps} reverse steps)")
    compensation = AugmentConfig(p_gray=recipe.p_gray, sigma=recipe.sigma)
    beton = purify_dataset(poisoned, denoiser, work / "purified.beton", config=config, batch_size=250, device="cpu")
    purified = read_beton(beton)
    timings["purification_s"] = time.perf_counter() - start
    preview = save_preview(poisoned.images, purified.images, work / "preview.png", count=8, seed=args.seed)
    print(f"wrote {beton} and {preview} (rows: poisoned / purified / compensated)")

    runs: list[tuple[str, Any, AugmentConfig]] = [
        ("no defence (poisoned data)", poisoned, AugmentConfig(compensate=False)),
        (f"ECLIPSE, {args.recipe} recipe (purified + compensation)", purified, compensation),
    ]
    if args.ablation:
        runs.append(("compensation only (poisoned data)", poisoned, compensation))
        runs.append(("purification only (no compensation)", purified, AugmentConfig(compensate=False)))
    if args.clean_reference:
        runs.append(("clean data, no defence (reference)", train, AugmentConfig(compensate=False)))
    results = {}
    for k, (name, data, augment) in enumerate(runs, start=3):
        start = _step(f"{k}/{len(runs) + 2} train the victim: {name}, {args.epochs} epochs")
        result = train_victim(data, test, augment, epochs=args.epochs, seed=args.seed)
        results[name] = result.test_accuracy
        timings[f"victim {name} s"] = time.perf_counter() - start
        print(f"test accuracy {result.test_accuracy:.1%} ({result.train_seconds:.0f}s)")

    print("\n== result (500 embedded test images, small CNN victim)")
    for name, accuracy in results.items():
        print(f"  {name:<40} {accuracy:6.1%}")
    summary = {"accuracy": results, "timings_s": {k: round(v, 1) for k, v in timings.items()}, "args": vars(args) | {"func": None}}
    (work / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nsaved {work / 'results.json'}")
    return 0

"""`eclipse-loader demo`: the whole ECLIPSE pipeline, end to end, on the embedded CIFAR-10 sample.

Poison the 2,000 training images (class-wise patch colours, LSP-style, a model-free poison). With the default
``--recipe auto``: train a denoiser on half of the 500 trusted images, choose the defence by measuring every
candidate with a small proxy CNN scored on the other half (`eclipse_loader.select`, its table is printed),
apply the chosen defence, and train the victim without defence, with the chosen defence and with the fixed
``default`` recipe. With ``--recipe default|paper``: train the denoiser on all 500 trusted images and run
that recipe only. A victim on the clean images is the reference; accuracies are on 500 test images.
Everything lands in ``--workdir``; finished steps are reused when the command is re-run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

from ..data.embedded import load_embedded
from ..data.images import LabelledImages
from ..evaluation.victim import train_victim
from ..loading.config import AugmentConfig
from ..loading.torch_loader import BatchTransform
from ..poisons.model_free import classwise_noise, classwise_patches
from ..purify.run import purify_dataset
from ..recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe
from ..storage.beton import read_beton
from . import steps_arg

#: purification levels the demo's selection tries (the paper's and the default recipe's)
AUTO_T_STARS = (100, 400)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="poison, purify and train on the embedded CIFAR-10 sample; compare accuracies",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--workdir", default="eclipse-demo", help="where the denoiser, betons and results go")
    parser.add_argument("--preset", default="small", help="denoiser preset (tiny, small, paper)")
    parser.add_argument("--denoiser-steps", type=int, default=300, help="denoiser training steps")
    parser.add_argument("--denoiser-lr", type=float, default=1e-3, help="denoiser learning rate")
    parser.add_argument("--recipe", choices=["auto", *sorted(RECIPES)], default="auto",
                        help="defence settings: 'auto' (chosen on the trusted set, compared with 'default'), "
                             "'default' (outlier repair, t*=400, 2 steps, mild compensation) or 'paper'")
    parser.add_argument("--proxy-images", type=int, default=500, help="with auto: proxy training images")
    parser.add_argument("--proxy-epochs", type=int, default=30, help="with auto: proxy epochs")
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


def _purify(data: LabelledImages, recipe: Recipe, denoiser: Path, beton: Path, args: argparse.Namespace
            ) -> LabelledImages:
    """``data`` through ``recipe``'s offline steps, purified into ``beton`` when the recipe purifies."""
    from ..purify.run import purify_dataset
    from ..select.offline import recipe_before_purification

    before = recipe_before_purification(recipe, data)  # repair, grayscale, JPEG: the order selection measured
    if not recipe.purification:
        return before
    config = recipe.purify_config(steps=args.purify_steps, seed=args.seed, repair=False)
    return read_beton(purify_dataset(before, denoiser, beton, config=config, batch_size=250, device="cpu"))


def _victim_inputs(recipe: Recipe, seed: int) -> tuple[AugmentConfig, Optional[BatchTransform]]:
    """The victim's online augmentation for ``recipe``: compensation, and RSK+FF when chosen."""
    augment = AugmentConfig(compensate=recipe.p_gray > 0 or recipe.sigma > 0, p_gray=recipe.p_gray, sigma=recipe.sigma)
    if recipe.augment is None:
        return augment, None
    from ..select.augment import rsk_ff_keyed

    return augment, lambda images, indices, epoch: rsk_ff_keyed(images, indices, seed, epoch)


def _select(poisoned: LabelledImages, trusted: LabelledImages, denoiser_set: LabelledImages, denoiser: Path,
            work: Path, args: argparse.Namespace) -> Recipe:
    from ..select.api import tune
    from ..select.proxy import ProxySettings

    steps = {None: DEFAULT_RECIPE.purify_steps, "full": None}.get(args.purify_steps, args.purify_steps)
    recipe, selection, paths = tune(
        poisoned, trusted, denoiser, work / "auto", seed=args.seed, t_stars=AUTO_T_STARS, purify_steps=steps,
        proxy=ProxySettings(images=args.proxy_images, epochs=args.proxy_epochs),
        denoiser_images=denoiser_set.images, try_trusted_mix=False,
        progress=lambda done, total, name: print(f"  [{done}/{total}] {name}", flush=True))
    print(paths["markdown"].read_text())
    print(f"chosen: {selection.chosen.name} ({selection.reason})")
    return recipe


def run(args: argparse.Namespace) -> int:
    from ..denoiser.io import weights_path
    from ..adapters.lightning_denoiser import train_denoiser
    from ..purify.preview import save_preview

    auto = args.recipe == "auto"
    default = get_recipe("default")
    fixed = default if auto else get_recipe(args.recipe).with_overrides(t_star=args.t_star)
    args.t_star = fixed.t_star
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    train, trusted, test = (load_embedded(s) for s in ("train", "trusted", "test"))
    poison = classwise_patches if args.poison == "patches" else classwise_noise
    poisoned = poison(train, args.epsilon, seed=args.seed)
    print(f"embedded CIFAR-10 sample: {len(train)} train (poison: class-wise {args.poison}, L-inf {args.epsilon * 255:.0f}/255), "
          f"{len(trusted)} trusted clean, {len(test)} test")

    # auto: the denoiser trains on half the trusted set, the selection validates on the other half
    denoiser_set = _denoiser_half(trusted, args.seed) if auto else trusted
    t_max = max(fixed.denoiser_t_max, args.t_star - 1, *(t - 1 for t in (AUTO_T_STARS if auto else ())))
    denoiser = work / (f"denoiser-{args.preset}-{args.denoiser_steps}-t{t_max}" + ("-half" if auto else ""))
    total = 4 + int(args.clean_reference) + 2 * int(args.ablation) + 3 * int(auto)
    step = iter(range(1, total + 1))
    start = _step(f"{next(step)}/{total} train the {args.preset} denoiser on {len(denoiser_set)} trusted images "
                  f"({args.denoiser_steps} steps)")
    if weights_path(denoiser).exists():
        print(f"reusing {denoiser}")
    else:
        train_denoiser(denoiser_set, args.preset, denoiser, max_steps=args.denoiser_steps, batch_size=32,
                       lr=args.denoiser_lr, t_max=t_max, ema_decay=0.995, seed=args.seed, accelerator="cpu",
                       progress=True)
    timings["denoiser_training_s"] = time.perf_counter() - start

    chosen = None
    if auto:
        start = _step(f"{next(step)}/{total} choose the defence: every candidate through a proxy CNN "
                      f"({args.proxy_images} images x {args.proxy_epochs} epochs), scored on the "
                      f"{len(trusted) - len(denoiser_set)} trusted images the denoiser did not see")
        chosen = _select(poisoned, trusted, denoiser_set, denoiser, work, args)
        timings["selection_s"] = time.perf_counter() - start

    config = fixed.purify_config(steps=args.purify_steps, seed=args.seed)
    steps = "all" if config.steps is None else config.steps
    start = _step(f"{next(step)}/{total} purify the poisoned set with the {'default' if auto else args.recipe} recipe "
                  f"(t*={args.t_star}, {steps} reverse steps)")
    beton = purify_dataset(poisoned, denoiser, work / "purified.beton", config=config, batch_size=250, device="cpu")
    purified = read_beton(beton)
    timings["purification_s"] = time.perf_counter() - start
    preview = save_preview(poisoned.images, purified.images, work / "preview.png", count=8, seed=args.seed)
    print(f"wrote {beton} and {preview} (rows: poisoned / purified / compensated)")

    fixed_augment, _ = _victim_inputs(fixed, args.seed)
    runs: list[tuple[str, LabelledImages, AugmentConfig, Optional[BatchTransform]]] = [
        ("no defence (poisoned data)", poisoned, AugmentConfig(compensate=False), None),
        (f"ECLIPSE, {'default' if auto else args.recipe} recipe (purified + compensation)", purified, fixed_augment,
         None),
    ]
    if chosen is not None:
        start = _step(f"{next(step)}/{total} apply the chosen defence")
        defended = purified if chosen == default else _purify(poisoned, chosen, denoiser, work / "auto.beton", args)
        timings["auto_offline_s"] = time.perf_counter() - start
        runs.insert(1, ("auto (the defence chosen on the trusted set)", defended, *_victim_inputs(chosen, args.seed)))
    if args.ablation:
        runs.append(("compensation only (poisoned data)", poisoned, fixed_augment, None))
        runs.append(("purification only (no compensation)", purified, AugmentConfig(compensate=False), None))
    if args.clean_reference:
        runs.append(("clean data, no defence (reference)", train, AugmentConfig(compensate=False), None))
    results = {}
    for name, data, augment, transform in runs:
        start = _step(f"{next(step)}/{total} train the victim: {name}, {args.epochs} epochs")
        result = train_victim(data, test, augment, epochs=args.epochs, seed=args.seed, batch_transform=transform)
        results[name] = result.test_accuracy
        timings[f"victim {name} s"] = time.perf_counter() - start
        print(f"test accuracy {result.test_accuracy:.1%} ({result.train_seconds:.0f}s)")

    print("\n== result (500 embedded test images, small CNN victim)")
    for name, accuracy in results.items():
        print(f"  {name:<50} {accuracy:6.1%}")
    summary = {"accuracy": results, "timings_s": {k: round(v, 1) for k, v in timings.items()},
               "chosen": None if chosen is None else chosen.to_dict(), "args": vars(args) | {"func": None}}
    (work / "results.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nsaved {work / 'results.json'}")
    return 0


def _denoiser_half(trusted: LabelledImages, seed: int) -> LabelledImages:
    """The class-balanced half of the trusted set auto's denoiser trains on (the selection validates on the rest)."""
    from ..data.sparse import select_sparse_indices

    return trusted.subset(np.sort(select_sparse_indices(trusted, count=len(trusted) // 2, seed=seed)))

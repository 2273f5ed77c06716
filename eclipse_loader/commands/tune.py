"""`eclipse-loader tune`: choose the defence for this dataset by measuring candidates on the trusted set."""
from __future__ import annotations

import argparse

from ..data.sources import SOURCE_SPEC_HELP
from ..select.stats import TIE_BREAKS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tune",
        help="pick the defence for a dataset: score candidate defences with a proxy on held-out trusted images",
        description=(
            "Builds each candidate defence (no defence, outlier repair, JPEG q30/q10, grayscale, purification at "
            "several t* with and without repair, compensation levels, RSK+FF, combinations) on a class-balanced "
            "subset of SOURCE, trains a small proxy CNN on it and scores it on TRUSTED images the denoiser did not "
            "train on. Chooses the best (ties to the lighter defence with --tie-break lighter), 'none' unless "
            "something beats it beyond the noise. Writes OUT_DIR/recipe.json (for purify --recipe FILE / "
            "EclipseDataModule(recipe=FILE)) and selection.{json,md,png}. Resumable: rerun the same command and finished candidates are reused."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", help="the (possibly poisoned) training data; " + SOURCE_SPEC_HELP)
    parser.add_argument("trusted", help="trusted clean images of the same classes, disjoint from SOURCE")
    parser.add_argument("denoiser",
                        help="denoiser directory (train-denoiser), or 'none' to skip the purification candidates")
    parser.add_argument("out_dir", help="directory for recipe.json, the report and the resume cache")
    parser.add_argument("--seed", type=int, default=0, help="seed of subsets, proxy training and intervals")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="shrink the proxy (images, then epochs) so the estimate fits; no candidate is dropped")
    parser.add_argument("--proxy-images", type=int, default=2000, help="class-balanced proxy training images")
    parser.add_argument("--proxy-epochs", type=int, default=30, help="proxy epochs (it must fit its training set)")
    parser.add_argument("--proxy-width", type=int, default=16, help="channel width of the proxy CNN")
    parser.add_argument("--proxy-batch-size", type=int, default=128, help="proxy batch size")
    parser.add_argument("--t-stars", default="100,200,400,600", help="purification t* candidates (comma list)")
    parser.add_argument("--purify-steps", type=int, default=None, help="reverse steps (default: the default recipe's)")
    parser.add_argument("--denoiser-trained-on", default=None, metavar="SOURCE",
                        help="the images the denoiser trained on (kept out of validation); default: from denoiser.json")
    parser.add_argument("--min-per-class", type=int, default=10, help="fewest validation images per class accepted")
    parser.add_argument("--max-validation", type=int, default=2000, help="most validation images (class balanced)")
    parser.add_argument("--tie-break", choices=TIE_BREAKS, default="lighter",
                        help="lighter: a lighter candidate within 1 point of the best (and its paired interval) wins; "
                             "best: the best wins")
    parser.add_argument("--device", default="cpu", help="device of the purification (the proxy runs on CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def _t_stars(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--t-stars must be a comma list of positive integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--t-stars must be a comma list of positive integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> int:
    import torch

    from ..storage.sources import load_source
    from ..recipes import DEFAULT_RECIPE
    from ..select.api import tune
    from ..select.proxy import ProxySettings

    if args.threads:
        torch.set_num_threads(args.threads)
    t_stars = _t_stars(args.t_stars)
    proxy = ProxySettings(images=args.proxy_images, epochs=args.proxy_epochs, width=args.proxy_width,
                          batch_size=args.proxy_batch_size)
    train, trusted = load_source(args.source, lazy=True), load_source(args.trusted)  # train: read where used
    steps = DEFAULT_RECIPE.purify_steps if args.purify_steps is None else args.purify_steps
    denoiser = None if args.denoiser.lower() == "none" else args.denoiser
    seen = None
    if denoiser is not None and args.denoiser_trained_on:
        seen = load_source(args.denoiser_trained_on).images
        print(f"validation excludes the {len(seen)} images of {args.denoiser_trained_on}")
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="candidates", unit="cand")

    def progress(done: int, total: int, name: str) -> None:
        if bar is not None:
            bar.total = total
            bar.set_postfix_str(name)
            bar.update(1)

    try:
        recipe, selection, paths = tune(
            train, trusted, denoiser, args.out_dir, seed=args.seed, budget_minutes=args.budget_minutes, proxy=proxy,
            t_stars=t_stars, purify_steps=steps, denoiser_images=seen, device=args.device, progress=progress,
            log=print if bar is None else (lambda m: bar.write(m)), min_per_class=args.min_per_class,
            max_validation=args.max_validation, tie_break=args.tie_break,
            source={"source": args.source, "trusted": args.trusted, "denoiser": args.denoiser, "seed": args.seed,
                    "budget_minutes": args.budget_minutes, "t_stars": list(t_stars),
                    "tie_break": args.tie_break})
    finally:
        if bar is not None:
            bar.close()
    p = selection.plan.proxy
    print(f"proxy: {p.images} images x {p.epochs} epochs"
          + (f" (shrunk from {selection.plan.requested.images} x {selection.plan.requested.epochs} for the budget)"
             if selection.plan.proxy != selection.plan.requested else ""))
    print(paths["markdown"].read_text())
    print(f"chosen: {selection.chosen.name}; recipe written to {paths['recipe']}")
    return 0

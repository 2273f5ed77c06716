"""`eclipse-loader purify`: purify a (possibly poisoned) dataset offline into an FFCV beton."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Optional, Union

from ..data.sources import SOURCE_SPEC_HELP
from ..recipes import Recipe, load_recipe
from . import DefaultsHelpFormatter, non_negative_float, positive_float, positive_int, steps_arg, unit_interval

if TYPE_CHECKING:
    from ..data.images import LabelledImages
    from ..purify.purifier import PurifyConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "purify",
        help="noise every image to t* and denoise it back with a trained denoiser; write a beton",
        description=(
            "ECLIPSE purification: isolated outlier pixels are repaired (default recipe), each image is scaled "
            "to [-1,1], noised in one shot to t* (the recipe's: 400 of 4000 by default, 100 with --recipe paper) "
            "and denoised back to t=0 (2 strided DDPM steps by default, the full chain with --recipe paper), "
            "clipped and rounded to uint8. Sample i's noise depends only on (--seed, i). Resumable: rerun the "
            "same command after an interruption. OUTPUT may be a .beton (needs the ffcv extra) or a .npz."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("source", help="the dataset to purify; " + SOURCE_SPEC_HELP)
    parser.add_argument("denoiser", help="denoiser directory written by `eclipse-loader train-denoiser`")
    parser.add_argument("output", help="the .beton (or .npz: no ffcv needed) file to write")
    parser.add_argument("--recipe", default="default",
                        help="defaults of the settings below: 'default' (outlier repair, t*=400, 2 steps), 'paper' "
                             "(ECLIPSE as published: t*=100, full chain, no repair), a recipe .json written by "
                             "`eclipse-loader tune`, or 'auto' (run the selection on --trusted first)")
    parser.add_argument("--trusted", default=None,
                        help="with --recipe auto: the trusted clean source the selection validates on")
    parser.add_argument("--tune-dir", default=None,
                        help="with --recipe auto: where the selection and its report are kept (default OUTPUT.tune; "
                             "resumable)")
    parser.add_argument("--budget-minutes", type=positive_float, default=None,
                        help="with --recipe auto: shrink the selection's proxy to fit this many minutes")
    parser.add_argument("--t-star", type=int, default=None, help="forward steps t* (default: the recipe's)")
    parser.add_argument("--noise-std", type=float, default=None,
                        help="forward noise std in [-1,1] units; picks t* instead of the recipe (not with --t-star)")
    parser.add_argument("--steps", type=steps_arg, default=None,
                        help="network calls on the way back, at most t*, or 'full' for all t* (default: the recipe's)")
    parser.add_argument("--repair-threshold", type=int, default=None,
                        help="repair isolated outlier pixels beyond this many grey levels first (default: the recipe's)")
    parser.add_argument("--no-repair", action="store_true", help="do not repair outlier pixels")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                        help="ddpm: stochastic ancestral (paper); ddim: deterministic eta=0")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the per-sample noise")
    parser.add_argument("--noise-rng", choices=["counter", "generator"], default="counter",
                        help="counter: hash-based noise drawn on the device (default); generator: per-sample CPU "
                             "generators of earlier releases (reproduces their results)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the U-Net (CUDA only)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="images per U-Net call; the result is bit-identical at equal batch size and device, and "
                             "across batch sizes on CPU a rare pixel may differ by one grey level (default: 256)")
    parser.add_argument("--chunk-size", type=positive_int, default=None,
                        help="images per resumable shard file (default max(batch, 1024); distributed: batch)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--work-dir", default=None,
                        help="where the shard files are kept (default OUTPUT.work; distributed: OUTPUT.shards)")
    parser.add_argument("--keep-work", action="store_true", help="keep the shard files after writing the output")
    parser.add_argument("--npz", default=None, help="also write the purified arrays to this .npz")
    parser.add_argument("--preview", default=None, metavar="PNG",
                        help="write a PNG grid of original / purified / compensated samples")
    parser.add_argument("--preview-count", type=positive_int, default=8, help="columns of the preview grid")
    parser.add_argument("--p-gray", type=unit_interval, default=None,
                        help="compensation grayscale probability (preview only; default: the recipe's)")
    parser.add_argument("--sigma", type=non_negative_float, default=None,
                        help="compensation noise std (preview only; default: the recipe's)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    dist = parser.add_argument_group(
        "distributed (Lightning Trainer.predict; any of these flags selects this path)",
        "Every process of a torchrun/srun launch runs the same command. Ranks write index-keyed shards to "
        "--work-dir (default OUTPUT.shards; --chunk-size images each, default --batch-size); global rank 0 "
        "then assembles the beton, byte-identical to the single-process result at the same --batch-size. A rerun, at any world size, "
        "computes only the missing shards.",
    )
    dist.add_argument("--devices", default=argparse.SUPPRESS,
                      help="devices per node: an integer or 'auto' (Lightning Trainer)")
    dist.add_argument("--num-nodes", type=int, default=argparse.SUPPRESS, help="number of nodes (Lightning Trainer)")
    dist.add_argument("--strategy", choices=["auto", "ddp", "ddp_spawn", "ddp_fork"], default=argparse.SUPPRESS,
                      help="Lightning strategy (default ddp; ddp for torchrun/SLURM)")
    dist.add_argument("--accelerator", default=argparse.SUPPRESS,
                      help="cpu, gpu, cuda, auto ... (Lightning Trainer; default auto)")
    dist.add_argument("--num-workers", type=int, default=argparse.SUPPRESS,
                      help="DataLoader workers per rank (default 0)")
    stage = dist.add_mutually_exclusive_group()
    stage.add_argument("--no-assemble", dest="mode", action="store_const", const="shards_only", default="full",
                       help="only write the shards (assemble later)")
    stage.add_argument("--assemble-only", dest="mode", action="store_const", const="assemble_only", default="full",
                       help="start no workers: assemble the finished shards into OUTPUT on this host")
    parser.set_defaults(func=run)


DISTRIBUTED_FLAGS = ("devices", "num_nodes", "strategy", "accelerator", "num_workers")


def _is_distributed(args: argparse.Namespace) -> bool:
    return any(hasattr(args, name) for name in DISTRIBUTED_FLAGS) or args.mode != "full"


def _devices(value: str) -> Union[int, str]:
    if value == "auto":
        return "auto"
    try:
        devices = int(value)
    except ValueError:
        raise ValueError(f"--devices must be a positive integer or 'auto', got {value!r}") from None
    if devices < 1:
        raise ValueError(f"--devices must be a positive integer or 'auto', got {value!r}")
    return devices


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The recipe named by ``--recipe`` (a name or a .json file); ``auto`` is resolved in `run`."""
    if args.recipe == "auto":
        raise ValueError("--recipe auto is resolved by running the selection; call resolve_recipe")
    return load_recipe(args.recipe)


def purify_config_from_args(args: argparse.Namespace, recipe: Optional[Recipe] = None) -> PurifyConfig:
    """The PurifyConfig of the command line: the recipe's settings, overridden by explicit flags."""
    recipe = recipe_from_args(args) if recipe is None else recipe
    if args.t_star is not None and args.noise_std is not None:
        raise ValueError("give --t-star or --noise-std, not both")
    if args.no_repair and args.repair_threshold is not None:
        raise ValueError("give --repair-threshold or --no-repair, not both")
    return recipe.with_overrides(t_star=args.t_star).purify_config(
        steps=args.steps, repair_threshold=args.repair_threshold, repair=not args.no_repair,
        noise_std=args.noise_std, sampler=args.sampler, seed=args.seed, noise_rng=args.noise_rng, bf16=args.bf16)


def preview_settings(args: argparse.Namespace, recipe: Recipe) -> tuple[float, float]:
    """``(p_gray, sigma)`` of the preview's compensated row: the flags', else the recipe's."""
    return (recipe.p_gray if args.p_gray is None else args.p_gray,
            recipe.sigma if args.sigma is None else args.sigma)


def resolve_recipe(args: argparse.Namespace, data: LabelledImages) -> Recipe:
    """The recipe in force: ``--recipe auto`` runs the selection (`eclipse_loader.select.api.tune`) on
    ``--trusted`` with this denoiser and prints its table; anything else is `recipe_from_args`."""
    if args.recipe != "auto":
        if args.trusted is not None:
            raise ValueError("--trusted is used only with --recipe auto")
        return recipe_from_args(args)
    if args.trusted is None:
        raise ValueError("--recipe auto needs --trusted SOURCE (the trusted clean images to validate on)")
    from ..storage.sources import load_source
    from ..select.api import tune

    tune_dir = args.tune_dir or f"{args.output}.tune"
    recipe, _, paths = tune(data, load_source(args.trusted), args.denoiser, tune_dir, seed=args.seed,
                            budget_minutes=args.budget_minutes, log=print)
    print(paths["markdown"].read_text() if "markdown" in paths else f"selection written to {tune_dir}")
    return recipe


def run(args: argparse.Namespace) -> int:
    from ..storage.sources import load_source
    from ..purify.run import purify_dataset

    if args.recipe != "auto":
        purify_config_from_args(args)  # a bad flag or recipe fails before the data is read
    if args.preview is not None:
        from ..output_files import check_output

        check_output(args.preview, what="--preview")
    # an image folder or npz is read block by block where purified; the selection (--recipe auto) reads
    # its proxy subsets and one streamed pass of image hashes, never the whole source at once
    data = load_source(args.source, lazy=True)
    recipe = resolve_recipe(args, data)
    config = purify_config_from_args(args, recipe)
    p_gray, sigma = preview_settings(args, recipe)
    original = data
    if (recipe.grayscale or recipe.chroma_block is not None or recipe.chroma_swap or recipe.jpeg_quality is not None
            or not recipe.purification):
        data, config = _offline_steps(recipe, data, config)
    if not recipe.purification:
        return _write_unpurified(args, data.materialised(), original, p_gray, sigma)
    if _is_distributed(args):
        if args.device is not None:
            raise ValueError("--device selects the single-process path; with --devices/--num-nodes/--strategy "
                             "use --accelerator (cpu, gpu, ...) instead")
        from ..adapters.lightning_purify import purify_distributed

        out = purify_distributed(
            data, args.denoiser, args.output, config=config, work_dir=args.work_dir, batch_size=args.batch_size,
            shard_size=args.chunk_size, accelerator=getattr(args, "accelerator", "auto"),
            devices=_devices(getattr(args, "devices", "auto")), num_nodes=getattr(args, "num_nodes", 1),
            strategy=getattr(args, "strategy", "ddp"), num_workers=getattr(args, "num_workers", 0),
            progress=not args.no_progress, also_npz=args.npz, keep_work=args.keep_work, mode=args.mode)
        if out is None:  # a rank other than global 0, or --no-assemble
            return 0
    else:
        out = purify_dataset(data, args.denoiser, args.output, config=config, work_dir=args.work_dir,
                             batch_size=args.batch_size, chunk_size=args.chunk_size, device=args.device,
                             progress=not args.no_progress, also_npz=args.npz, keep_work=args.keep_work)
    print(f"purified {len(data)} images to {out}")
    _preview(args, original, out, p_gray, sigma)
    return 0


def _offline_steps(recipe: Recipe, data: LabelledImages, config: PurifyConfig) -> tuple[LabelledImages, PurifyConfig]:
    """A tuned recipe's steps before the diffusion (repair, grayscale, JPEG), in the order the selection
    measured, applied where the purification reads each block (so each DDP rank runs them on its own
    blocks only); the purifier then runs without its own repair."""
    from dataclasses import replace

    from ..select.offline import offline_steps_lazily

    before = replace(recipe, repair_threshold=config.repair_threshold)
    return offline_steps_lazily(before, data), replace(config, repair_threshold=None)


def _write_unpurified(args: argparse.Namespace, data: LabelledImages, original: LabelledImages, p_gray: float,
                      sigma: float) -> int:
    """A recipe without purification: its offline steps only, written to OUTPUT (.beton or .npz)."""
    from pathlib import Path

    from ..storage.beton import write_beton

    out = Path(args.output)
    if out.suffix == ".npz":
        from ..output_files import check_output, save_npz

        check_output(out, data.images.nbytes)
        save_npz(out, images=data.images, labels=data.labels)
    else:
        write_beton(out, data, metadata={"source": args.source, "recipe": args.recipe}, progress=not args.no_progress)
    print(f"the recipe does not purify: wrote {len(data)} images (its offline steps only) to {out}")
    _preview(args, original, out, p_gray, sigma)
    return 0


def _preview(args: argparse.Namespace, original: LabelledImages, out: object, p_gray: float, sigma: float) -> None:
    if not args.preview:
        return
    from ..storage.sources import load_source
    from ..purify.preview import save_preview

    purified = load_source(str(out), num_classes=original.num_classes).images
    path = save_preview(original.images, purified, args.preview, count=args.preview_count, p_gray=p_gray,
                        sigma=sigma, seed=args.seed)
    print(f"preview written to {path}")

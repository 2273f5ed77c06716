"""`eclipse-loader train-denoiser`: choose the sparse clean set and train the ECLIPSE denoiser on it."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

from ..data.sources import SOURCE_SPEC_HELP
from ..recipes import RECIPES, get_recipe
from . import DefaultsHelpFormatter, non_negative_int, positive_float, positive_int, unit_interval



def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train-denoiser",
        help="train the sparse-set diffusion denoiser (saved as safetensors + config.json)",
        description=(
            "Pick a class-balanced sparse clean set from a TRUSTED clean source (default 4% of --train-size "
            "images, the paper's B/N), optionally check it shares no image with the evaluation set, and train "
            "a diffusers UNet2DModel on it (eps-MSE, cosine schedule, T=4000, EMA weights). The output "
            "directory holds unet/ and scheduler/ in diffusers format plus denoiser.json. Checkpoints and the "
            "CSV loss log go to --work-dir; rerunning the same command after a kill resumes from the last "
            "checkpoint."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("source", help="trusted clean images to draw the sparse set from; " + SOURCE_SPEC_HELP)
    parser.add_argument("output", help="directory to write the denoiser to")
    parser.add_argument("--preset", choices=["paper", "small", "tiny"], default="small",
                        help="U-Net size: paper (52.5M params, GPU), small (CPU-trainable), tiny (tests only)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--sparse-count", type=positive_int, default=None, help="sparse-set size in images")
    size.add_argument("--sparse-fraction", type=float, default=None,
                      help="sparse-set size as a fraction of --train-size (default 0.04)")
    size.add_argument("--all", action="store_true", help="use the whole source as the sparse set")
    parser.add_argument("--train-size", type=positive_int, default=None,
                        help="size of the (poisoned) training set the fraction refers to (default: size of SOURCE)")
    parser.add_argument("--sparse-seed", type=int, default=0, help="seed of the sparse-set draw")
    parser.add_argument("--eval-source", default=None,
                        help="the set the victim will be scored on; the sparse set is checked for shared images")
    parser.add_argument("--overlap", choices=["refuse", "warn"], default="refuse",
                        help="what to do when the sparse set shares images with --eval-source")
    parser.add_argument("--enlarge", type=non_negative_int, default=0, metavar="M",
                        help="duplicate enlargement: append M plain copies of the sparse set (paper M=4; no effect "
                             "on the sampling distribution)")
    parser.add_argument("--max-steps", type=positive_int, default=20000, help="optimizer steps (paper: 250000)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="images per step (paper recipe: 128)")
    parser.add_argument("--lr", type=positive_float, default=2e-4, help="AdamW learning rate")
    parser.add_argument("--ema-decay", type=unit_interval, default=0.9999, help="EMA decay of the saved weights")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="default",
                        help="purification recipe the denoiser serves, which sets the default --t-max: "
                             + ", ".join(f"'{name}' t <= {r.denoiser_t_max} (t*={r.t_star})"
                                         for name, r in sorted(RECIPES.items())) + " (default: %(default)s)")
    parser.add_argument("--t-max", type=int, default=None,
                        help="train only on timesteps t <= T_MAX (default: the recipe's; -1: all 4000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of init, data order, noise and timesteps")
    hardware = parser.add_argument_group("hardware (Lightning Trainer flags; --strategy ddp for several devices)")
    hardware.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    hardware.add_argument("--devices", default="1", help="devices per node: a count, 'auto', or a list such as 0,1")
    hardware.add_argument("--strategy", default="auto", help="Lightning strategy: auto, ddp, ...")
    hardware.add_argument("--num-nodes", type=positive_int, default=1,
                          help="machines (multi-node DDP; --work-dir on shared storage)")
    progress = parser.add_argument_group("checkpoints and logging")
    progress.add_argument("--work-dir", default=None,
                          help="checkpoints, job.json and the CSV loss log (logs/version_N/metrics.csv); "
                               "default: OUTPUT.train beside OUTPUT")
    progress.add_argument("--checkpoint-every", type=non_negative_int, default=1000,
                          help="steps between checkpoints (0: only at the end)")
    progress.add_argument("--no-resume", action="store_true",
                          help="start afresh even if --work-dir holds a checkpoint of this job")
    progress.add_argument("--log-every", type=positive_int, default=25,
                          help="steps between rows of the CSV loss log (and printed loss lines with --no-progress)")
    progress.add_argument("--no-progress", action="store_true",
                          help="hide the progress bar (the loss is printed instead)")
    parser.set_defaults(func=run)


def _t_max(args: argparse.Namespace) -> "int | None":
    if args.t_max is None:
        return get_recipe(args.recipe).denoiser_t_max
    return None if args.t_max == -1 else args.t_max


def _devices(value: str) -> "int | str":
    """``--devices``: a count as an int (Lightning reads the string "2" as device index 2 on GPUs)."""
    return int(value) if value.strip().isdigit() else value


def run(args: argparse.Namespace) -> int:
    from ..storage.sources import load_source
    from ..data.sparse import check_overlap, duplicate_enlarge, select_sparse_indices
    from ..denoiser.resume import default_work_dir
    from ..denoiser.objective import TrainingInterrupted

    pool = load_source(args.source)
    if args.all:
        indices = list(range(len(pool)))
    else:
        indices = select_sparse_indices(pool, count=args.sparse_count, fraction=args.sparse_fraction,
                                        train_size=args.train_size, seed=args.sparse_seed).tolist()
    sparse = pool.subset(indices)
    if args.eval_source:
        check_overlap(sparse, load_source(args.eval_source), policy=args.overlap)
    train_set = duplicate_enlarge(sparse, args.enlarge) if args.enlarge else sparse
    print(f"sparse set: {len(sparse)} images from {args.source}"
          f"{f' (x{args.enlarge + 1} after enlargement)' if args.enlarge else ''}")
    work = args.work_dir or default_work_dir(args.output)
    # SIGTERM during training: Lightning's own handler finishes the step, then the state is saved
    # (the CLI's handler would exit at once, possibly halfway through an optimizer step)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL) if in_main_thread else None
    try:
        out = _train(args, train_set, indices, work)
    except TrainingInterrupted as stopped:
        print(f"eclipse-loader train-denoiser: {stopped}", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(f"denoiser written to {out} (checkpoints and the CSV loss log: {work})")
    return 0


def _train(args: argparse.Namespace, train_set: Any, indices: list[int], work: Any) -> Any:
    from ..adapters.lightning_denoiser import train_denoiser

    return train_denoiser(
        train_set, args.preset, args.output, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
        ema_decay=args.ema_decay, t_max=_t_max(args), seed=args.seed, accelerator=args.accelerator,
        devices=_devices(args.devices), strategy=args.strategy, num_nodes=args.num_nodes,
        progress=not args.no_progress, work_dir=work, checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume, log_every=args.log_every,
        metadata={"source": args.source, "sparse_indices": indices, "sparse_seed": args.sparse_seed,
                  "eval_source": args.eval_source, "enlarge_m": args.enlarge},
    )

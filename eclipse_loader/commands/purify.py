"""`eclipse-loader purify`: purify a (possibly poisoned) dataset offline into an FFCV beton."""
from __future__ import annotations

import argparse
from typing import Union

from ..data.sources import SOURCE_SPEC_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "purify",
        help="noise every image to t* and denoise it back with a trained denoiser; write a beton",
        description=(
            "ECLIPSE purification: each image is scaled to [-1,1], noised in one shot to t* (default: the step "
            "whose noise std is 0.05, t*=100 of 4000) and denoised back to t=0 (full stochastic DDPM chain by "
            "default), clipped and rounded to uint8. Sample i's noise depends only on (--seed, i), so results "
            "do not depend on batch size. Resumable: rerun the same command after an interruption."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("source", help="the dataset to purify; " + SOURCE_SPEC_HELP)
    parser.add_argument("denoiser", help="denoiser directory written by `eclipse-loader train-denoiser`")
    parser.add_argument("output", help="the .beton file to write")
    parser.add_argument("--t-star", type=int, default=None, help="forward steps t* (default: from --noise-std)")
    parser.add_argument("--noise-std", type=float, default=0.05,
                        help="forward noise std in [-1,1] units used to pick t* when --t-star is not given")
    parser.add_argument("--steps", type=int, default=None,
                        help="network calls on the way back (default: t*, the full chain); fewer = strided, faster")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm",
                        help="ddpm: stochastic ancestral (paper); ddim: deterministic eta=0")
    parser.add_argument("--seed", type=int, default=0, help="base seed of the per-sample noise")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the U-Net (CUDA only)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per U-Net call (result unchanged)")
    parser.add_argument("--chunk-size", type=int, default=None,
                        help="images per resumable chunk (default max(batch, 1024)); distributed: images per "
                             "shard (default batch)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--work-dir", default=None,
                        help="where chunks are kept (default OUTPUT.work; distributed: OUTPUT.shards)")
    parser.add_argument("--keep-work", action="store_true", help="keep the chunk/shard files after writing the beton")
    parser.add_argument("--npz", default=None, help="also write the purified arrays to this .npz")
    parser.add_argument("--preview", default=None, metavar="PNG",
                        help="write a PNG grid of original / purified / compensated samples")
    parser.add_argument("--preview-count", type=int, default=8, help="columns of the preview grid")
    parser.add_argument("--p-gray", type=float, default=0.4, help="compensation grayscale probability (preview only)")
    parser.add_argument("--sigma", type=float, default=0.05, help="compensation noise std (preview only)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    dist = parser.add_argument_group(
        "distributed (Lightning Trainer.predict; any of these flags selects this path)",
        "Every process of a torchrun/srun launch runs the same command. Ranks write index-keyed shards to "
        "--work-dir (default OUTPUT.shards; --chunk-size images each, default --batch-size); global rank 0 "
        "then assembles the beton, byte-identical to the single-process result. A rerun, at any world size, "
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
    stage.add_argument("--no-assemble", action="store_true", help="only write the shards (assemble later)")
    stage.add_argument("--assemble-only", action="store_true",
                       help="start no workers: assemble the finished shards into OUTPUT on this host")
    parser.set_defaults(func=run)


DISTRIBUTED_FLAGS = ("devices", "num_nodes", "strategy", "accelerator", "num_workers")


def _is_distributed(args: argparse.Namespace) -> bool:
    return any(hasattr(args, name) for name in DISTRIBUTED_FLAGS) or args.no_assemble or args.assemble_only


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


def run(args: argparse.Namespace) -> int:
    from ..data.sources import load_source
    from ..purify.purifier import PurifyConfig
    from ..purify.run import purify_dataset
    from ..storage.beton import read_beton

    config = PurifyConfig(t_star=args.t_star, noise_std=args.noise_std, steps=args.steps, sampler=args.sampler,
                          seed=args.seed, bf16=args.bf16)
    data = load_source(args.source)
    if _is_distributed(args):
        if args.device is not None:
            raise ValueError("--device selects the single-process path; with --devices/--num-nodes/--strategy "
                             "use --accelerator (cpu, gpu, ...) instead")
        from ..purify.distributed import purify_distributed

        out = purify_distributed(
            data, args.denoiser, args.output, config=config, work_dir=args.work_dir, batch_size=args.batch_size,
            shard_size=args.chunk_size, accelerator=getattr(args, "accelerator", "auto"),
            devices=_devices(getattr(args, "devices", "auto")), num_nodes=getattr(args, "num_nodes", 1),
            strategy=getattr(args, "strategy", "ddp"), num_workers=getattr(args, "num_workers", 0),
            progress=not args.no_progress, also_npz=args.npz, keep_work=args.keep_work, assemble=not args.no_assemble,
            assemble_only=args.assemble_only,
        )
        if out is None:  # a rank other than global 0, or --no-assemble
            return 0
    else:
        out = purify_dataset(data, args.denoiser, args.output, config=config, work_dir=args.work_dir,
                             batch_size=args.batch_size, chunk_size=args.chunk_size, device=args.device,
                             progress=not args.no_progress, also_npz=args.npz, keep_work=args.keep_work)
    print(f"purified {len(data)} images to {out}")
    if args.preview:
        from ..purify.preview import save_preview

        purified = read_beton(out, data.num_classes).images
        path = save_preview(data.images, purified, args.preview, count=args.preview_count, p_gray=args.p_gray,
                            sigma=args.sigma, seed=args.seed)
        print(f"preview written to {path}")
    return 0

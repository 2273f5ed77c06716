"""`eclipse-loader purify`: purify a (possibly poisoned) dataset offline into an FFCV beton."""
from __future__ import annotations

import argparse

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
    parser.add_argument("--chunk-size", type=int, default=None, help="images per resumable chunk (default max(batch, 1024))")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--work-dir", default=None, help="where chunks are kept (default OUTPUT.work)")
    parser.add_argument("--npz", default=None, help="also write the purified arrays to this .npz")
    parser.add_argument("--preview", default=None, metavar="PNG",
                        help="write a PNG grid of original / purified / compensated samples")
    parser.add_argument("--preview-count", type=int, default=8, help="columns of the preview grid")
    parser.add_argument("--p-gray", type=float, default=0.4, help="compensation grayscale probability (preview only)")
    parser.add_argument("--sigma", type=float, default=0.05, help="compensation noise std (preview only)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.sources import load_source
    from ..purify.purifier import PurifyConfig
    from ..purify.run import purify_dataset
    from ..storage.beton import read_beton

    config = PurifyConfig(t_star=args.t_star, noise_std=args.noise_std, steps=args.steps, sampler=args.sampler,
                          seed=args.seed, bf16=args.bf16)
    data = load_source(args.source)
    out = purify_dataset(data, args.denoiser, args.output, config=config, work_dir=args.work_dir,
                         batch_size=args.batch_size, chunk_size=args.chunk_size, device=args.device,
                         progress=not args.no_progress, also_npz=args.npz)
    print(f"purified {len(data)} images to {out}")
    if args.preview:
        from ..purify.preview import save_preview

        purified = read_beton(out, data.num_classes).images
        path = save_preview(data.images, purified, args.preview, count=args.preview_count, p_gray=args.p_gray,
                            sigma=args.sigma, seed=args.seed)
        print(f"preview written to {path}")
    return 0

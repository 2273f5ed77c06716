"""`eclipse-loader write-beton`: validate a dataset and write it to an FFCV beton (no purification)."""
from __future__ import annotations

import argparse

from ..data.sources import SOURCE_SPEC_HELP
from ..storage.sources import load_source
from ..storage.beton import write_beton


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "write-beton", help="validate a dataset and write it as an FFCV beton (fields image, label)",
        description="Validate every sample first (dtype, shape, channels, sizes, labels), then write the beton "
                    "atomically (temporary file renamed when complete). Readable by FFCV's CIFAR example.",
    )
    parser.add_argument("source", help=SOURCE_SPEC_HELP)
    parser.add_argument("output", help="the .beton file to write")
    parser.add_argument("--grayscale", choices=["refuse", "convert"], default="refuse",
                        help="single-channel images: refuse them (default) or repeat the channel")
    parser.add_argument("--resize", type=int, nargs=2, metavar=("H", "W"), help="resize images (needed for mixed sizes)")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes; labels outside [0, N) are refused (default: max label + 1)")
    parser.add_argument("--write-mode", choices=["raw", "jpg", "smart", "proportion"], default="raw",
                        help="raw (exact pixels, default), jpg (all JPEG: for large images), smart or proportion "
                             "(FFCV's mixed modes)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of compressed images (default 90)")
    parser.add_argument("--num-workers", type=int, default=None, help="writer processes (default: all cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = load_source(args.source, grayscale=args.grayscale, resize=tuple(args.resize) if args.resize else None,
                       num_classes=args.num_classes)
    path = write_beton(args.output, data, write_mode=args.write_mode, jpeg_quality=args.jpeg_quality,
                       num_workers=args.num_workers,
                       metadata={"source": args.source})
    print(f"wrote {len(data)} samples ({data.num_classes} classes, {data.image_shape}) to {path}")
    return 0

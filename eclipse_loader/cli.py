"""`eclipse-loader` command line: one sub-command per job, each a thin front-end over the library."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

# name -> module exposing `register(subparsers)`; each module adds its own parser and handler
# (handler is stored as the `func` default and called with the parsed namespace).
COMMAND_MODULES = {
    "train-denoiser": "eclipse_loader.commands.train_denoiser",
    "purify": "eclipse_loader.commands.purify",
    "write-beton": "eclipse_loader.commands.write_beton",
    "demo": "eclipse_loader.commands.demo",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eclipse-loader",
        description="Purify availability-poisoned image datasets (ECLIPSE) and load them for training.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from .purify.run import WorkDirMismatchError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, WorkDirMismatchError) as error:  # bad input: one clear line, no traceback
        print(f"eclipse-loader {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

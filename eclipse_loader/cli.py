"""`eclipse-loader` command line: one sub-command per job, each a thin front-end over the library."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Optional, Sequence

# name -> module exposing `register(subparsers)`; each module adds its own parser and handler
# (handler is stored as the `func` default and called with the parsed namespace).
COMMAND_MODULES = {
    "train-denoiser": "eclipse_loader.commands.train_denoiser",
    "purify": "eclipse_loader.commands.purify",
    "write-beton": "eclipse_loader.commands.write_beton",
    "demo": "eclipse_loader.commands.demo",
    "tune": "eclipse_loader.commands.tune",
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="eclipse-loader",
        description="Purify availability-poisoned image datasets (ECLIPSE) and load them for training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES.values():
        importlib.import_module(module_name).register(sub)
    return parser


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds: locks released, temporary files removed


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except Exception as error:
        if not isinstance(error, _input_errors()):
            raise
        print(f"eclipse-loader {args.command}: error: {error}", file=sys.stderr)  # bad input: one line, no traceback
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def _input_errors() -> tuple[type[Exception], ...]:
    """The errors that mean bad input. A work-dir mismatch is one only once purification code has run:
    importing it up front would load torch and diffusers (~3 s) into every command's start-up."""
    from .errors import MissingExtraError

    run = sys.modules.get("eclipse_loader.purify.run")
    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            MissingExtraError) + ((run.WorkDirMismatchError,) if run is not None else ())


if __name__ == "__main__":
    sys.exit(main())

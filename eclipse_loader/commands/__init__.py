"""Sub-commands of the `eclipse-loader` CLI (one module each, see `eclipse_loader.cli`)."""
from __future__ import annotations

import argparse
from typing import Any, Callable, Union


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help only when the help states no default itself and
    X says something (not None, False or a suppressed value)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def steps_arg(text: str) -> Union[int, str]:
    """argparse type of ``--steps``: a positive integer or ``full`` (every one of the t* steps)."""
    if text == "full":
        return "full"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r} (the full chain: 'full')")
    return value


def _number_type(cast: Callable[[str], Any], accept: Callable[[Any], bool], expected: str) -> Callable[[str], Any]:
    """An argparse ``type=``: ``cast`` the text, refuse it unless ``accept(value)``, naming ``expected``."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected.replace(" ", "_")
    return parse


#: argparse types of the CLI's numeric options (each error names what was expected)
unit_interval = _number_type(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")
non_negative_float = _number_type(float, lambda v: v >= 0.0, "a number >= 0")
positive_float = _number_type(float, lambda v: v > 0.0, "a number > 0")
positive_int = _number_type(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _number_type(int, lambda v: v >= 0, "an integer >= 0")

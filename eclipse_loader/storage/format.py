"""The beton format's fixed facts shared by the writer and the reader: the manifest beside a beton,
the error of a damaged file, and the check that the ffcv extra is installed (torch-free, ffcv-free)."""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Union

from ..errors import MissingExtraError

PathLike = Union[str, os.PathLike]
MANIFEST_SUFFIX = ".json"
FFCV_EXTRA_HINT = ("ffcv is not installed: pip install 'eclipse-loader[ffcv]' (it builds from source and needs "
                   "apt-get install pkg-config libturbojpeg0-dev libopencv-dev)")


class DamagedBetonError(ValueError):
    """A beton file that is truncated, damaged or not a beton at all; the message names the file."""


def require_ffcv() -> None:
    """Raise `MissingExtraError` (one line naming the extra to install) when ffcv cannot be imported."""
    try:
        found = importlib.util.find_spec("ffcv") is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
        found = False
    if not found:
        raise MissingExtraError(FFCV_EXTRA_HINT)


def manifest_path(beton: PathLike) -> Path:
    """Where the JSON manifest written next to a beton lives (``<name>.beton.json``)."""
    return Path(str(beton) + MANIFEST_SUFFIX)


def read_manifest(path: PathLike) -> dict[str, Any]:
    """The manifest written next to a beton by `write_beton` (``{}`` when there is none)."""
    mpath = manifest_path(path)
    return json.loads(mpath.read_text()) if mpath.exists() else {}

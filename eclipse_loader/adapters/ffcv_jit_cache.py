"""Compile FFCV's pipeline functions once per machine instead of once per process.

FFCV compiles every pipeline function with numba (``Compiler.compile``) in each process that builds
a `Loader`; for the CIFAR training pipeline (decode, flip, translate) that is 15-20 s before the first
batch on 2 cores, in every process, every run. numba can keep the machine code on disk
(``cache=True``), keyed by the function's code and the values it closes over, but FFCV never asks
for it. `caching_ffcv_compiler` asks for it while a loader is being built: FFCV's own functions
(module ``ffcv.*``, defined in a file, closing over plain values: numbers, arrays, ``range``) are compiled with
``cache=True``; anything else (a user's op, the generated stage code) is compiled exactly as FFCV
would. Functions numba cannot cache (those calling ctypes, such as FFCV's JPEG decoder) compile as
before. The compensation kernels (`compensation.numba_kernels`) are cached by themselves.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, Callable, Iterator, Optional

from ffcv.pipeline.compiler import Compiler
import numpy as np
from numba import njit, prange
from numba.core.errors import NumbaWarning

_LOCK = threading.Lock()
warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)


def _plain(value: Any) -> bool:
    """Values whose pickle is the same in every process (a compiled function's is not, so a closure
    over one would add a new cache entry per process instead of finding the old one)."""
    if isinstance(value, np.ndarray):
        return value.dtype != object
    if value is None or value is range or value is prange or isinstance(value, (bool, int, float, str, bytes, np.generic)):
        return True
    return isinstance(value, tuple) and all(_plain(v) for v in value)


CACHED_MODULES = ("ffcv.", "eclipse_loader.adapters.ffcv_raw_decoder")
"""Modules whose pipeline functions are cached (FFCV's, and our decoder written for it)."""


def cacheable(code: Callable) -> bool:
    """Whether to cache ``code``: a function of `CACHED_MODULES` from a source file that closes over
    plain values only."""
    if not getattr(code, "__module__", "").startswith(CACHED_MODULES):
        return False
    if getattr(getattr(code, "__code__", None), "co_filename", "<")[:1] == "<":
        return False
    return all(_plain(cell.cell_contents) for cell in code.__closure__ or ())


def _compile(cls: Any, code: Callable, signature: Optional[Any] = None) -> Callable:
    if not cls.is_enabled or not cacheable(code):
        return _ORIGINAL(cls, code, signature)
    parallel = bool(getattr(code, "is_parallel", False)) and cls.num_threads > 1
    return njit(signature, fastmath=True, nogil=True, error_model="numpy", parallel=parallel, cache=True)(code)


_ORIGINAL = Compiler.compile.__func__


@contextlib.contextmanager
def caching_ffcv_compiler() -> Iterator[None]:
    """While active, FFCV's ``Compiler.compile`` caches FFCV's own functions on disk (see module doc).

    Same compile options as FFCV's (``fastmath``, ``nogil``, ``error_model='numpy'``, ``parallel``
    when more than one thread), so the compiled code is the same; only where it comes from changes.
    """
    with _LOCK:
        Compiler.compile = classmethod(_compile)
        try:
            yield
        finally:
            Compiler.compile = classmethod(_ORIGINAL)

"""Compile FFCV's pipeline functions once per machine instead of once per process.

FFCV compiles every pipeline function with numba (``Compiler.compile``) in each process that builds
a `Loader`; for the CIFAR training pipeline (decode, flip, translate) that is 15-20 s before the first
batch on 2 cores, in every process, every run. numba can keep the machine code on disk
(``cache=True``), keyed by the function's code and the values it closes over, but FFCV never asks
for it. `caching_ffcv_compiler` asks for it while a loader is being built: FFCV's own functions
(module ``ffcv.*``, defined in a file, closing over picklable values) are compiled with
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
from numba import njit
from numba.core import serialize
from numba.core.errors import NumbaWarning

_LOCK = threading.Lock()
warnings.filterwarnings("ignore", message="Cannot cache compiled function", category=NumbaWarning)


def cacheable(code: Callable) -> bool:
    """Whether numba may cache ``code``: an FFCV function from a source file whose closure pickles."""
    if not getattr(code, "__module__", "").startswith("ffcv."):
        return False
    if getattr(getattr(code, "__code__", None), "co_filename", "<")[:1] == "<":
        return False
    try:
        serialize.dumps(tuple(cell.cell_contents for cell in code.__closure__ or ()))
    except Exception:  # noqa: BLE001 - anything unpicklable: numba would fail to build the cache key
        return False
    return True


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

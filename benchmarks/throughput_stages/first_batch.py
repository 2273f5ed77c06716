"""The ``first_batch`` stage: seconds from `make_ffcv_loader` to the first batch, empty vs warm numba cache."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

from _common import run_isolated

from eclipse_loader.recipes import PAPER_RECIPE

def first_batch_seconds(beton: str, batch: int, workers: int) -> dict[str, Any]:
    """Seconds from `make_ffcv_loader` (training pipeline with compensation) to its first batch."""
    start = time.perf_counter()
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader
    from eclipse_loader.loading.config import AugmentConfig

    imported = time.perf_counter()
    loader = make_ffcv_loader(beton, batch, augment=AugmentConfig(p_gray=PAPER_RECIPE.p_gray, sigma=PAPER_RECIPE.sigma),
                              shuffle=True, drop_last=True, num_workers=workers)
    epoch = iter(loader)
    next(epoch)
    done = time.perf_counter()
    epoch.close()  # (kept open until here: abandoning it waits for FFCV's thread to finish a batch)
    loader.close()
    return {"import_seconds": round(imported - start, 2), "first_batch_seconds": round(done - imported, 2),
            "load_avg_1min": round(os.getloadavg()[0], 2)}


def first_batch_runs(beton: str, batch: int, workers: int, processes: int) -> dict[str, Any]:
    """`first_batch_seconds` in ``processes`` fresh processes that share an empty numba cache directory."""
    with tempfile.TemporaryDirectory(prefix="numba-cache-") as cache:
        previous = os.environ.get("NUMBA_CACHE_DIR")
        os.environ["NUMBA_CACHE_DIR"] = cache  # inherited by the spawned children
        try:
            runs = [run_isolated(first_batch_seconds, beton, batch, workers, sample_interval_s=None) for _ in range(processes)]
        finally:
            if previous is None:
                os.environ.pop("NUMBA_CACHE_DIR")
            else:
                os.environ["NUMBA_CACHE_DIR"] = previous
    warm = [r["first_batch_seconds"] for r in runs[1:]]
    return {"runs": runs, "note": "run 0 compiles (empty cache), the others load the cached code",
            "target_max_seconds_after_first_run": 1.0, "met": bool(warm) and max(warm) <= 1.0}

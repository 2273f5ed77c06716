"""Shared helpers for the benchmarks: machine facts and incremental JSON-lines output."""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _version(package: str) -> Optional[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    cpu, cpu_id = platform.processor(), {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name":
                cpu = value
            elif key in ("cpu family", "model", "stepping", "microcode") and key not in cpu_id:
                cpu_id[key] = value
            elif key == "flags":  # which vector kernels oneDNN/MKL can pick (they change float results)
                cpu_id["avx512"] = any(flag.startswith("avx512") for flag in value.split())
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cpu_id": cpu_id,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        # cpu-quick cells rerun in another venv / host differed by 0.2-1.3 points: these say what differed
        "packages": {name: _version(name) for name in ("numpy", "torchvision", "diffusers", "numba", "ffcv", "lightning")},
        "python": platform.python_version(),
        "git_commit": commit,
        "load_avg_1min": os.getloadavg()[0],
    }


def log(message: str) -> None:
    """One progress line with the wall-clock time, flushed."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
    print(json.dumps(record), flush=True)


def psnr(a: Any, b: Any) -> float:
    """PSNR (dB) of two uint8 arrays from their pooled MSE."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * float(np.log10(255.0**2 / mse))


# ---- shared by the benchmark scripts: data, timing loops, isolated stages --------------------------------

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10.npz"
"""Real CIFAR-10 (see ../shared/data/README.md): benchmark input, never a runtime dependency."""


def load_cifar(count: Optional[int] = None, split: str = "train") -> tuple[Any, Any]:
    """The first ``count`` uint8 NHWC images and labels of CIFAR-10's ``split`` (all when None)."""
    import numpy as np

    with np.load(CIFAR, allow_pickle=False) as archive:
        images, labels = archive[f"{split}_x"], archive[f"{split}_y"]
    if count is not None:
        if count > len(images):
            raise ValueError(f"asked for {count} {split} images, CIFAR-10 has {len(images)}")
        images, labels = images[:count], labels[:count]
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def time_epochs(loader: Any, epochs: int) -> float:
    """Images/s over ``epochs`` full epochs, after one untimed warm-up epoch (numba JIT for FFCV)."""
    for _ in loader:
        pass
    start = time.perf_counter()
    count = 0
    for _ in range(epochs):
        for x, _ in loader:
            count += len(x)
    return count / (time.perf_counter() - start)


def time_purification(purifier: Any, images: Any, batch_size: int, budget_s: Optional[float] = None) -> tuple[int, float]:
    """Purify ``images`` in batches after one 2-image warm-up; returns (images done, seconds).

    With ``budget_s``, stops after the first batch that ends past the budget (at least one batch).
    """
    purifier.purify(images[: min(2, len(images))], range(min(2, len(images))))  # warm-up
    sync(purifier.device)
    start, done = time.perf_counter(), 0
    while done < len(images):
        stop = min(done + batch_size, len(images))
        purifier.purify(images[done:stop], range(done, stop))
        done = stop
        if budget_s is not None and time.perf_counter() - start >= budget_s:
            break
    sync(purifier.device)
    return done, time.perf_counter() - start


def sync(device: Any) -> None:
    """Wait for ``device``'s queued work (CUDA); nothing on the CPU. Call before reading a clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def device_report(script: str, args: Any, device: torch.device) -> dict[str, Any]:
    """The header of a speed benchmark's results: the command that reproduces it (every option but ``--out``),
    the device's name, torch's threads and version, `machine_info`, and an empty ``runs`` list."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out")
    return {"command": f"python benchmarks/{script} {options}", "device": name, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "machine": machine_info(), "runs": []}


def mib(num_bytes: float) -> float:
    return round(num_bytes / 2**20, 1)


class TreeMemorySampler:
    """Samples the summed PSS of this process and all its descendants (workers, writer pools).

    PSS splits pages shared after ``fork`` between the processes that map them, so the sum is the
    memory the stage really occupies. Sampled every ``interval_s``: a spike shorter than that can be
    missed. Needs psutil; without it ``peak_mib`` stays None.
    """

    def __init__(self, interval_s: float = 0.1) -> None:
        import threading

        self.interval_s, self.peak_bytes = interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            import psutil
        except ImportError:
            return
        me = psutil.Process()
        while True:
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.Error, OSError):
                    pass
            self.peak_bytes = max(self.peak_bytes, total)
            if self._stop.wait(self.interval_s):
                return

    @property
    def peak_mib(self) -> Optional[float]:
        return mib(self.peak_bytes) if self.peak_bytes else None


def _vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _isolated_entry(fn: Callable[..., dict[str, Any]], args: tuple, kwargs: dict, conn: Any, interval_s: Optional[float]) -> None:
    import contextlib
    import traceback

    try:
        rss_start = _vm_kib("VmRSS")
        sampler = TreeMemorySampler(interval_s) if interval_s else None
        with sampler or contextlib.nullcontext():
            result = fn(*args, **kwargs)
        memory = {
            # VmHWM: this process's own resident high-water mark (per address space, so a spawned child
            # does not inherit its parent's, unlike ru_maxrss, which survives exec)
            "peak_rss_mib": round(_vm_kib("VmHWM") / 1024, 1),
            "rss_at_start_mib": round(rss_start / 1024, 1),
            # RUSAGE_CHILDREN is not reported: a fork+exec'd child's ru_maxrss includes its parent's RSS
            "peak_tree_pss_mib": sampler.peak_mib if sampler else None,
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            memory["cuda_max_allocated_mib"] = mib(torch.cuda.max_memory_allocated())
        conn.send(("ok", {**result, "memory": memory}))
    except BaseException:  # report, then exit non-zero
        conn.send(("error", traceback.format_exc()))
        raise
    finally:
        conn.close()


def run_isolated(
    fn: Callable[..., dict[str, Any]], *args: Any, sample_interval_s: Optional[float] = 0.2, **kwargs: Any
) -> dict[str, Any]:
    """Run ``fn(*args, **kwargs)`` in a fresh (spawned) interpreter and return its dict plus ``memory``.

    Each measured stage runs alone in its own process, so its peak memory is its own and no stage
    inherits another's caches, JIT state or thread settings. ``fn`` must be a module-level function.
    ``sample_interval_s=None`` turns off the PSS sampler thread (for timing-critical stages: it
    takes the GIL while it reads /proc).
    """
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_entry, args=(fn, args, kwargs, child, sample_interval_s))
    proc.start()
    child.close()
    try:
        status, payload = parent.recv()
    except EOFError:
        status, payload = "error", "child exited without a result"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its child process (exit {proc.exitcode}):\n{payload}")
    return payload


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def write_result(path: Path, fields: dict[str, Any]) -> None:
    """``fields`` with this machine (`machine_info`) and the command line, written atomically as JSON."""
    write_json_atomic(path, {**fields, "machine": machine_info(), "command": command_line()})


def grouped_bar_plot(rows: dict[str, dict[str, float]], series: list[str], path: Path, *, title: str,
                     reference: Optional[tuple[float, str]] = None, width_per_group: float = 1.4, rotation: float = 0,
                     legend_font: float = 7, legend_cols: int = 3, dpi: int = 110) -> None:
    """One group of bars per row (x axis), one bar per series; values are accuracies in [0, 1], missing ones NaN.

    ``reference`` (accuracy in [0, 1], label) draws a dashed horizontal line.
    """
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(8, width_per_group * len(rows)), 4.5))
    width = 0.8 / max(1, len(series))
    for k, name in enumerate(series):
        ax.bar(np.arange(len(rows)) + k * width, [100 * r.get(name, np.nan) for r in rows.values()], width, label=name)
    if reference is not None:
        ax.axhline(100 * reference[0], color="k", ls="--", lw=0.8, label=reference[1])
    ax.set_xticks(np.arange(len(rows)) + 0.4 - width / 2, list(rows), rotation=rotation)
    ax.set_ylabel("clean test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=legend_font, ncol=legend_cols)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rho with average ranks for ties."""
    def ranks(x: list[float]) -> np.ndarray:
        x = np.asarray(x)
        order = x.argsort()
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):
            r[x == value] = r[x == value].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])

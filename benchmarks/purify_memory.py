"""Peak memory of `eclipse-loader purify` against the dataset size (issue 16, item 4).

    python benchmarks/purify_memory.py --sizes 10000,50000,200000 [--steps 1] [--source npz|npz-compressed|folder] [--ranks 2]

For each size, a CIFAR-shaped source is made by tiling the embedded sample into an uncompressed
``.npz`` (memory-mapped by the reader), with ``--source npz-compressed`` into an ``np.savez_compressed``
archive (inflated where each block is read, `InflatedNpzImages`) or, with ``--source folder``, into an image folder of PNGs (which
`purify` decodes block by block, on the rank that purifies the block), a tiny-preset denoiser is saved, and the purify command runs
in a subprocess whose process tree (the command and FFCV's writer processes) is sampled every
0.1 s from /proc/PID/smaps_rollup: the peak of the summed PSS, and of its anonymous part (Pss_Anon:
memory the job itself holds, as opposed to file pages of the mapped source and output, which the
kernel can drop). PSS counts a page shared by forked processes once in all. With ``--ranks R`` the command runs as R gloo DDP
ranks on the CPU (``--accelerator cpu --devices R --strategy ddp``) and each rank's own peak is recorded too.
Results go to ``benchmarks/results/purify-memory-<date>.json``, rewritten after every size.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def _tree_memory(pid: int) -> tuple[int, int, dict[tuple[int, str], int]]:
    """(PSS, anonymous PSS) in bytes, summed over ``pid`` and its descendants (proportional set sizes,
    so pages a forked writer shares with its parent are counted once, not once per process), and the
    anonymous PSS of each ``(pid, role)``: role ``rank`` for the command itself and for the ranks it starts
    (Lightning gives them ``LOCAL_RANK``), ``other`` for the rest (FFCV's writers and other forked helpers)."""
    import psutil

    try:
        procs = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0, {}
    rss = anon = 0
    each: dict[tuple[int, str], int] = {}
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/smaps_rollup") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            launched = proc.ppid() == pid and "LOCAL_RANK" in proc.environ()  # not a process forked by a rank
            role = "rank" if proc.pid == pid or launched else "other"
            rss += int(fields["Pss"].split()[0]) * 1024
            own = int(fields["Pss_Anon"].split()[0]) * 1024
        except (OSError, KeyError, ValueError, psutil.Error):
            continue
        anon += own
        each[(proc.pid, role)] = own
    return rss, anon, each


def _write_source(n: int, kind: str, work: Path) -> tuple[str, Path]:
    """The purify source string and the path to delete afterwards: ``n`` tiled embedded-sample images."""
    from eclipse_loader.data.embedded import load_embedded

    sample = load_embedded("train")
    reps = -(-n // len(sample))
    images, labels = np.tile(sample.images, (reps, 1, 1, 1))[:n], np.tile(sample.labels, reps)[:n]
    if kind in ("npz", "npz-compressed"):
        source = work / f"source-{n}.npz"
        (np.savez if kind == "npz" else np.savez_compressed)(source, images=images, labels=labels)
        return f"npz:{source}", source
    import PIL.Image

    root = work / f"folder-{n}"
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"class_{label}").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(image).save(root / f"class_{label}" / f"{i:07d}.png", compress_level=1)
    return f"imagefolder:{root}", root


def _size_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def run_size(n: int, steps: int, work: Path, denoiser: Path, kind: str = "npz", ranks: int = 1) -> dict:
    spec, source = _write_source(n, kind, work)
    out = work / f"purified-{n}.beton"
    command = [sys.executable, "-m", "eclipse_loader.cli", "purify", spec, str(denoiser), str(out),
               "--steps", str(steps), "--no-progress", "--batch-size", "256"]
    if ranks > 1:
        command += ["--accelerator", "cpu", "--devices", str(ranks), "--strategy", "ddp"]
    start = time.perf_counter()
    proc = subprocess.Popen(command)
    peak_rss = peak_anon = 0
    peak_each: dict[tuple[int, str], int] = {}
    while proc.poll() is None:
        rss, anon, each = _tree_memory(proc.pid)
        peak_rss, peak_anon = max(peak_rss, rss), max(peak_anon, anon)
        for key, value in each.items():
            peak_each[key] = max(peak_each.get(key, 0), value)
        time.sleep(0.1)
    if proc.returncode != 0:
        raise SystemExit(f"purify failed on {n} images (exit {proc.returncode})")
    seconds = time.perf_counter() - start
    by_role: dict[str, list[float]] = {"rank": [], "other": []}
    for (_, role), value in peak_each.items():
        by_role[role].append(value / 2**20)
    result = {"images": n, "source": kind, "source_mib": _size_mib(source), "seconds": round(seconds, 1),
              "peak_pss_mib": round(peak_rss / 2**20, 1), "peak_pss_anon_mib": round(peak_anon / 2**20, 1),
              "output_pixels_mib": round(n * 32 * 32 * 3 / 2**20, 1), "ranks": ranks,
              # each purify process's own peak (the ranks; rank 0 also hashes the source and writes the beton)
              "peak_pss_anon_mib_by_rank": sorted((round(v, 1) for v in by_role["rank"]), reverse=True),
              # and the other processes' (FFCV's writer and its workers, forked from rank 0)
              "peak_pss_anon_mib_others": sorted((round(v, 1) for v in by_role["other"]), reverse=True),
              "peak_pss_anon_mib_others_sum": round(sum(by_role["other"]), 1)}
    shutil.rmtree(source) if source.is_dir() else source.unlink()
    out.unlink()
    Path(str(out) + ".json").unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--source", choices=("npz", "npz-compressed", "folder"), default="npz")
    parser.add_argument("--ranks", type=int, default=1, help="DDP ranks on the CPU (gloo); 1: the single-process pass")
    parser.add_argument("--out", default=None, help="default results/purify-memory[-SOURCE][-Nranks]-<date>.json")
    args = parser.parse_args()
    suffix = ("" if args.source == "npz" else f"-{args.source}") + ("" if args.ranks == 1 else f"-{args.ranks}ranks")
    args.out = args.out or str(RESULTS / f"purify-memory{suffix}-{datetime.date.today()}.json")
    import torch

    from _common import machine_info
    from eclipse_loader.denoiser import build_scheduler, build_unet, save_denoiser

    report = {"command": f"python benchmarks/purify_memory.py --sizes {args.sizes} --steps {args.steps} "
                         f"--source {args.source} --ranks {args.ranks}",
              "machine": machine_info(), "preset": "tiny", "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        denoiser = save_denoiser(build_unet("tiny"), build_scheduler(), Path(tmp) / "den")
        for n in (int(v) for v in args.sizes.split(",")):
            report["runs"].append(run_size(n, args.steps, Path(tmp), denoiser, args.source, args.ranks))
            print(json.dumps(report["runs"][-1]), flush=True)
            Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

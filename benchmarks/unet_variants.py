"""The purifier's U-Net forward under channels_last, bf16 autocast and torch.compile, against the product's path.

    python benchmarks/unet_variants.py [--device cpu] [--presets tiny,small] [--batch 256] [--rounds 5]

Issue 16, item 3 allows these "where they keep results within the documented tolerance". The product's path
(`Purifier`) runs the U-Net in float32, NCHW, with `make_batch_invariant`'s hooks, so a sample's result does not
depend on its batch. For each variant this measures, in one run with the variants interleaved per round:

* ``img_per_s``: images/s of one U-Net forward at ``--batch`` (median over rounds), and ``speedup`` against
  ``eager_invariant`` (the product's path) from the same rounds;
* ``max_abs_eps_diff``: the largest difference of the predicted noise from the product path's, on the same batch
  (the noise prediction is in units of the unit-variance noise);
* ``batch_invariant``: whether the first 8 samples' outputs are bit-identical computed in a batch of 8 and in the
  full batch (what the resumable, DDP-sharded purification relies on: its output bytes must not depend on how the
  dataset was cut into batches or ranks).

Results go to ``benchmarks/results/unet-variants-<date>-<device>.json``, rewritten after every preset.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from _common import device_report, sync
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser import build_unet
from eclipse_loader.purify.batch_invariance import make_batch_invariant
from eclipse_loader.purify.purifier import to_model_range

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = ("eager_invariant", "eager", "channels_last", "bf16_autocast", "compiled_invariant", "compiled")


def _forward(variant: str, preset: str, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    torch.manual_seed(0)
    unet = build_unet(preset).to(device).eval()
    if variant.endswith("invariant"):
        make_batch_invariant(unet)
    if variant == "channels_last":
        unet = unet.to(memory_format=torch.channels_last)
    model = torch.compile(unet) if variant.startswith("compiled") else unet
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if variant == "bf16_autocast" \
        else contextlib.nullcontext

    @torch.no_grad()
    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if variant == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            return model(x, t).sample.float().contiguous()

    return forward


def measure(preset: str, batch: int, rounds: int, device: torch.device, variants: list[str]) -> dict:
    images = load_embedded("train").images
    x = to_model_range(images[torch.arange(batch).numpy() % len(images)]).to(device)
    t = torch.full((batch,), 200, dtype=torch.long, device=device)
    forwards, first_call_s = {}, {}
    for name in variants:
        forwards[name] = _forward(name, preset, device)
        sync(device)
        start = time.perf_counter()
        forwards[name](x, t)  # warm-up; for torch.compile, the compilation
        sync(device)
        first_call_s[name] = round(time.perf_counter() - start, 2)
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for k in range(rounds):
        for name in variants[:: 1 if k % 2 == 0 else -1]:
            sync(device)
            start = time.perf_counter()
            forwards[name](x, t)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
    reference = forwards["eager_invariant"](x, t)
    result: dict = {"preset": preset, "batch": batch, "rounds": rounds, "variants": {}}
    for name in variants:
        out = forwards[name](x, t)
        small = forwards[name](x[:8].clone(), t[:8].clone())
        speedups = [b / s for b, s in zip(seconds["eager_invariant"], seconds[name])]
        result["variants"][name] = {
            "img_per_s": round(batch / statistics.median(seconds[name]), 1),
            "speedup_median": round(statistics.median(speedups), 3),
            "speedup_per_round": [round(v, 3) for v in speedups],
            "first_call_s": first_call_s[name],
            "max_abs_eps_diff": float((out - reference).abs().max()),
            "batch_invariant": bool(torch.equal(small, out[:8])),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--presets", default="tiny,small")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    variants = args.variants.split(",")
    if variants[0] != "eager_invariant" or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: start with eager_invariant (the reference) and pick from {', '.join(VARIANTS)}")
    device = torch.device(args.device)
    out = Path(args.out) if args.out else RESULTS / f"unet-variants-{datetime.date.today()}-{device.type}.json"
    report = device_report("unet_variants.py", args, device)
    for preset in args.presets.split(","):
        report["runs"].append(measure(preset, args.batch, args.rounds, device, variants))
        print(json.dumps(report["runs"][-1]), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

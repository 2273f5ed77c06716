"""The ``train_denoiser`` stage (formerly ``bench_train_denoiser.py``): training cost of a denoiser preset
and the quality of the resulting purifier.

For each timestep range (full [0, T) and restricted to t <= t*-1) trains with the same step budget,
then on held-out clean CIFAR-10 test images reports PSNR vs the clean image of: the noisy input
x_{t*} (rounded to uint8), the one-shot x0 prediction at t*, and the purified output (full DDPM
chain and DDIM with fewer steps). Results go to ``--train-denoiser-out`` (default
benchmarks/results/train_denoiser.jsonl), one JSON line per measurement, written as soon as it is measured.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import CIFAR, RESULTS, append_jsonl, command_line, machine_info, psnr


def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("train_denoiser stage (formerly bench_train_denoiser.py's options, prefixed)")
    group.add_argument("--train-denoiser-data", default=str(CIFAR))
    group.add_argument("--train-denoiser-preset", default="small")
    group.add_argument("--train-denoiser-steps", type=int, default=800)
    group.add_argument("--train-denoiser-batch-size", type=int, default=64)
    group.add_argument("--train-denoiser-lr", type=float, default=5e-4)
    group.add_argument("--train-denoiser-ema-decay", type=float, default=0.999)
    group.add_argument("--train-denoiser-sparse-count", type=int, default=2000)
    group.add_argument("--train-denoiser-eval-count", type=int, default=128)
    group.add_argument("--train-denoiser-modes", default="tstar,full",
                       help="comma list of: full (t in [0,T)), tstar (t <= 99)")
    group.add_argument("--train-denoiser-out", default=str(RESULTS / "train_denoiser.jsonl"))


def evaluate(denoiser_dir: Path, clean: np.ndarray, seed: int, batch: int) -> dict[str, float]:
    """PSNR against ``clean`` of the noisy input, the one-shot x0 prediction and two purifications."""
    from eclipse_loader.denoiser.io import load_denoiser
    from eclipse_loader.purify.purifier import Purifier, PurifyConfig, sample_seed, to_model_range, to_uint8

    unet, scheduler = load_denoiser(denoiser_dir)
    out: dict[str, float] = {}
    full = Purifier(unet, scheduler, PurifyConfig(seed=seed))
    x0 = to_model_range(clean)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(sample_seed(seed, i))) for i in range(len(clean))])
    x_t = full.add_noise(x0, noise)  # the exact x_{t*} the chain starts from
    out["psnr_noisy_input"] = psnr(to_uint8(x_t), clean)
    t = full.t_star - 1
    with torch.no_grad():
        eps = torch.cat([unet(x_t[i : i + batch], torch.full((len(x_t[i : i + batch]),), t)).sample for i in range(0, len(x_t), batch)])
    abar = float(scheduler.alphas_cumprod[t])
    x0_hat = ((x_t - (1 - abar) ** 0.5 * eps) / abar**0.5).clamp(-1, 1)
    out["psnr_one_shot_x0"] = psnr(to_uint8(x0_hat), clean)
    for name, cfg in (("ddpm_full", PurifyConfig(seed=seed)), ("ddim_10", PurifyConfig(seed=seed, steps=10, sampler="ddim"))):
        purifier = Purifier(unet, scheduler, cfg)
        start = time.perf_counter()
        result = np.concatenate([purifier.purify(clean[i : i + batch], range(i, min(i + batch, len(clean)))) for i in range(0, len(clean), batch)])
        out[f"psnr_purified_{name}"] = psnr(result, clean)
        out[f"seconds_purify_{name}"] = round(time.perf_counter() - start, 2)
    return out


def run(args: argparse.Namespace) -> None:
    from eclipse_loader.data.images import as_labelled_images
    from eclipse_loader.data.sparse import select_sparse_indices
    from eclipse_loader.adapters.lightning_denoiser import train_denoiser

    steps, out = args.train_denoiser_steps, Path(args.train_denoiser_out)
    archive = np.load(args.train_denoiser_data)
    train = as_labelled_images(archive["train_x"], archive["train_y"], 10)
    sparse = train.subset(select_sparse_indices(train, count=args.train_denoiser_sparse_count, seed=0))
    clean = archive["test_x"][: args.train_denoiser_eval_count]
    base = {"bench": "train_denoiser", "command": command_line(), "machine": machine_info(),
            "preset": args.train_denoiser_preset, "steps": steps, "batch_size": args.train_denoiser_batch_size,
            "lr": args.train_denoiser_lr, "ema_decay": args.train_denoiser_ema_decay,
            "sparse_count": len(sparse), "eval_images": len(clean), "eval": "CIFAR-10 test[:eval_count], t*=100"}
    for mode in args.train_denoiser_modes.split(","):
        t_max = {"full": None, "tstar": 99}[mode]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_denoiser(sparse, args.train_denoiser_preset, tmp, max_steps=steps,
                           batch_size=args.train_denoiser_batch_size, lr=args.train_denoiser_lr,
                           ema_decay=args.train_denoiser_ema_decay, t_max=t_max, seed=0, accelerator="cpu",
                           progress=False)
            wall = time.perf_counter() - start
            meta = json.loads((Path(tmp) / "denoiser.json").read_text())
            record = {**base, "mode": mode, "t_max": t_max, "train_seconds": meta["train_seconds"],
                      "wall_seconds_incl_save": round(wall, 2), "steps_per_s": round(steps / meta["train_seconds"], 3),
                      "final_losses": meta["loss_history"][-4:]}
            append_jsonl(out, {**record, "phase": "trained"})
            append_jsonl(out, {**record, "phase": "evaluated", **evaluate(Path(tmp), clean, seed=0, batch=64)})

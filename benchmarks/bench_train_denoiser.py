"""Training cost of a denoiser preset on this machine and the quality of the resulting purifier.

For each timestep range (full [0, T) and restricted to t <= t*-1) trains with the same step budget,
then on held-out clean CIFAR-10 test images reports PSNR vs the clean image of: the noisy input
x_{t*} (rounded to uint8), the one-shot x0 prediction at t*, and the purified output (full DDPM
chain and DDIM with fewer steps). Results go to benchmarks/results/train_denoiser.jsonl, one JSON
line per measurement, written as soon as it is measured.

    python benchmarks/bench_train_denoiser.py --preset small --steps 800 --batch-size 64
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, append_jsonl, command_line, machine_info, psnr  # noqa: E402

from eclipse_loader.data.images import as_labelled_images  # noqa: E402
from eclipse_loader.data.sparse import select_sparse_indices  # noqa: E402
from eclipse_loader.denoiser.io import load_denoiser  # noqa: E402
from eclipse_loader.denoiser.training import train_denoiser  # noqa: E402
from eclipse_loader.purify.purifier import Purifier, PurifyConfig, sample_seed, to_model_range, to_uint8  # noqa: E402


def evaluate(denoiser_dir: Path, clean: np.ndarray, seed: int, batch: int) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / "../shared/data/cifar10.npz"))
    parser.add_argument("--preset", default="small")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--sparse-count", type=int, default=2000)
    parser.add_argument("--eval-count", type=int, default=128)
    parser.add_argument("--modes", default="tstar,full", help="comma list of: full (t in [0,T)), tstar (t <= 99)")
    parser.add_argument("--out", default=str(RESULTS / "train_denoiser.jsonl"))
    args = parser.parse_args()

    archive = np.load(args.data)
    train = as_labelled_images(archive["train_x"], archive["train_y"], 10)
    sparse = train.subset(select_sparse_indices(train, count=args.sparse_count, seed=0))
    clean = archive["test_x"][: args.eval_count]
    base = {"bench": "train_denoiser", "command": command_line(), "machine": machine_info(), "preset": args.preset,
            "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "ema_decay": args.ema_decay,
            "sparse_count": len(sparse), "eval_images": len(clean), "eval": "CIFAR-10 test[:eval_count], t*=100"}
    for mode in args.modes.split(","):
        t_max = {"full": None, "tstar": 99}[mode]
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            train_denoiser(sparse, args.preset, tmp, max_steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                           ema_decay=args.ema_decay, t_max=t_max, seed=0, accelerator="cpu", progress=False)
            wall = time.perf_counter() - start
            import json
            meta = json.loads((Path(tmp) / "denoiser.json").read_text())
            record = {**base, "mode": mode, "t_max": t_max, "train_seconds": meta["train_seconds"], "wall_seconds_incl_save": round(wall, 2),
                      "steps_per_s": round(args.steps / meta["train_seconds"], 3), "final_losses": meta["loss_history"][-4:]}
            append_jsonl(Path(args.out), {**record, "phase": "trained"})
            append_jsonl(Path(args.out), {**record, "phase": "evaluated", **evaluate(Path(tmp), clean, seed=0, batch=64)})


if __name__ == "__main__":
    main()

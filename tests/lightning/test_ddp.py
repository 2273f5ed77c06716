"""Under 2-process CPU DDP each rank reads its own half of the data (FFCV and torch backends)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ..conftest import requires_ffcv

SCRIPT = Path(__file__).with_name("ddp_script.py")
pytestmark = pytest.mark.slow  # every test starts a 2-process DDP run


@pytest.mark.parametrize("backend", [pytest.param("ffcv", marks=requires_ffcv), "torch"])
def test_each_rank_sees_half_of_the_samples(tmp_path, cifar, backend):
    n = 128
    npz = tmp_path / "data.npz"
    np.savez(npz, images=cifar["train_x"][:n], labels=np.arange(n))  # label = index, to trace samples
    result = subprocess.run([sys.executable, str(SCRIPT), str(npz), str(tmp_path), backend],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [list(map(int, (tmp_path / f"rank{r}.txt").read_text().split())) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == n // 2  # drop_last batches of 16: 64 per rank
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(range(n))


def test_purify_under_ddp_completes_and_shards_the_purified_data(tmp_path, cifar):
    import torch

    from eclipse_loader.denoiser.io import save_denoiser
    from eclipse_loader.denoiser.presets import build_scheduler, build_unet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        denoiser = save_denoiser(build_unet("tiny"), build_scheduler(), tmp_path / "den")
    n = 64
    npz = tmp_path / "data.npz"
    np.savez(npz, images=cifar["train_x"][:n], labels=np.arange(n))
    result = subprocess.run([sys.executable, str(SCRIPT), str(npz), str(tmp_path), "torch", str(denoiser)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "cache" / "purified").glob("*.npz"))) == 1  # the torch backend's cache
    seen = [set(map(int, (tmp_path / f"rank{r}.txt").read_text().split())) for r in range(2)]
    assert seen[0] | seen[1] == set(range(n)) and not seen[0] & seen[1]


def test_train_denoiser_runs_under_ddp_and_rank_zero_saves(tmp_path):
    """`train-denoiser --devices 2 --strategy ddp` (CPU, gloo): two processes, one denoiser written."""
    import json

    out = tmp_path / "den"
    command = [sys.executable, "-m", "eclipse_loader.cli",
               "train-denoiser", "embedded:trusted", str(out), "--preset", "tiny", "--sparse-count", "16",
               "--batch-size", "4", "--max-steps", "3", "--checkpoint-every", "2", "--log-every", "1", "--t-max", "99",
               "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp", "--no-progress"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    info = json.loads((out / "denoiser.json").read_text())
    assert info["devices"] == 2 and info["trained_steps"] == 3
    assert (tmp_path / "den.train" / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "den.train" / "logs").glob("version_0/metrics.csv"))

"""Smoke tests of the recipes in integrations/: each is run as a user runs it (a subprocess), on tiny data.

ResNet-18 on 2 CPU cores trains ~15 images/s, so each run sees a few dozen to a few hundred images.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ..conftest import requires_ffcv

ROOT = Path(__file__).resolve().parents[2]
INTEGRATIONS = ROOT / "integrations"
pytestmark = pytest.mark.slow


def run_recipe(script: Path, *args: str, timeout: float = 300) -> str:
    """Run a recipe; fail with its output tail unless it exits 0. Returns stdout + stderr."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{script.name} exited {proc.returncode}:\n{output[-4000:]}"
    return output


def test_lightning_cli_recipe(tmp_path):
    """The shipped config.yaml (embedded CIFAR sample), cut to 2 training and 2 validation batches.

    The torch backend keeps it fast (FFCV's pipeline JIT takes ~20 s here); the FFCV path of the
    DataModule under Lightning is covered by test_datamodule.py, FFCV itself by test_ffcv_recipe.
    """
    out = run_recipe(
        INTEGRATIONS / "lightning_cli" / "train_cifar.py", "fit",
        "--config", INTEGRATIONS / "lightning_cli" / "config.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_epochs=1",
        # integers >= 2: jsonargparse reads "1" as the float 1.0, which Lightning takes as 100%
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--data.batch_size=8", "--data.eval_batch_size=16", "--data.backend=torch", f"--data.cache_dir={tmp_path / 'cache'}",
    )
    match = re.search(r"epoch 0: val_acc (\d\.\d+) \((\d+)/(\d+)\)", out)
    assert match, out[-4000:]
    accuracy, correct, seen = float(match.group(1)), int(match.group(2)), int(match.group(3))
    assert seen == 32 and accuracy == round(correct / seen, 4)  # 2 batches of 16, accuracy = correct / seen

    version = tmp_path / "run" / "lightning_logs" / "version_0"
    config = (version / "config.yaml").read_text()  # written by LightningCLI's SaveConfigCallback
    assert "train: embedded:train" in config and "lr_schedule: constant" in config
    (checkpoint,) = (version / "checkpoints").glob("*.ckpt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert state["hyper_parameters"]["lr"] == 0.1 and state["datamodule_hyper_parameters"]["batch_size"] == 8
    assert state["EclipseDataModule"]["seed"] == 0 and "epoch" in state["EclipseDataModule"]  # for resuming


@requires_ffcv
def test_ffcv_recipe(tmp_path, cifar):
    """FFCV-example-style script on betons of 128 training and 128 test images, one epoch on the CPU."""
    from eclipse_loader import as_labelled_images, write_beton

    train = write_beton(tmp_path / "train.beton", as_labelled_images(cifar["train_x"][:128], cifar["train_y"][:128],
                                                                     num_classes=10), progress=False)
    test = write_beton(tmp_path / "test.beton", as_labelled_images(cifar["test_x"][:128], cifar["test_y"][:128],
                                                                   num_classes=10), progress=False)
    out = run_recipe(
        INTEGRATIONS / "ffcv" / "train_cifar_ffcv.py", "--train-dataset", train, "--val-dataset", test,
        "--epochs", "1", "--batch-size", "64", "--num-workers", "64", "--device", "cpu",  # 64 workers: clamped
    )
    assert re.search(r"epoch 0: loss \d+\.\d+", out), out[-4000:]
    match = re.search(r"^test accuracy: (\d+\.\d+)%$", out, re.MULTILINE)
    assert match and 0.0 <= float(match.group(1)) <= 100.0, out[-4000:]


def test_plain_pytorch_recipe(tmp_path, cifar):
    """The DataModule driven by hand (torch backend, runs without ffcv): 2 epochs of 64 images."""
    train, val = tmp_path / "train.npz", tmp_path / "val.npz"
    np.savez(train, images=cifar["train_x"][:64], labels=cifar["train_y"][:64])
    np.savez(val, images=cifar["test_x"][:64], labels=cifar["test_y"][:64])
    out = run_recipe(
        INTEGRATIONS / "plain_pytorch" / "train.py", "--train", f"npz:{train}", "--val", f"npz:{val}",
        "--epochs", "2", "--batch-size", "32", "--backend", "torch", "--cache-dir", tmp_path / "cache",
    )
    assert "torch loaders: 2 training batches of 32, 10 classes" in out, out[-4000:]
    epochs = re.findall(r"^epoch (\d): train_loss \d+\.\d+\s+val_acc (\d\.\d+)", out, re.MULTILINE)
    assert [e for e, _ in epochs] == ["0", "1"], out[-4000:]
    assert re.search(r"^final val accuracy: \d\.\d+$", out, re.MULTILINE), out[-4000:]


@requires_ffcv
@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_lightning_cli_evaluates_on_the_ffcv_backend(tmp_path, subcommand):
    """`train_cifar.py validate|test --config ...` on FFCV used to hang after an inference-mode error in
    FFCV's worker thread (Lightning evaluates under torch.inference_mode)."""
    stage = "val" if subcommand == "validate" else "test"
    out = run_recipe(
        INTEGRATIONS / "lightning_cli" / "train_cifar.py", subcommand,
        "--config", INTEGRATIONS / "lightning_cli" / "config.yaml",
        "--trainer.accelerator=cpu", "--trainer.devices=1", f"--trainer.limit_{stage}_batches=2",
        "--trainer.enable_progress_bar=false", f"--trainer.default_root_dir={tmp_path / 'run'}",
        "--data.test=embedded:test", "--data.eval_batch_size=16", "--data.backend=ffcv",
        f"--data.cache_dir={tmp_path / 'cache'}", timeout=240,
    )
    match = re.search(rf"epoch 0: {stage}_acc (\d\.\d+) \((\d+)/(\d+)\)", out)
    assert match and int(match.group(3)) == 32, out[-4000:]  # 2 batches of 16, all seen
    assert float(match.group(1)) == round(int(match.group(2)) / 32, 4)

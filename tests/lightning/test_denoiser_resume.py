"""train-denoiser survives a kill: checkpoints every N steps, a rerun resumes, the loss goes to a CSV log."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser.io import load_denoiser
from eclipse_loader.denoiser.resume import TrainingWorkDirError, default_work_dir
from eclipse_loader.adapters.lightning_denoiser import train_denoiser

ROOT = Path(__file__).resolve().parents[2]


class Killed(RuntimeError):
    pass


class StopAt(L.Callback):
    """Stands in for a kill: raises after optimizer step ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Killed(f"killed after step {self.step}")


class FirstStep(L.Callback):
    def __init__(self) -> None:
        self.first: list[int] = []

    def on_train_start(self, trainer, pl_module):
        self.first.append(trainer.global_step)


def _data(n: int = 16):
    return load_embedded("trusted").subset(np.arange(n))


def _train(out: Path, max_steps: int, callbacks=(), **kwargs):
    options = dict(max_steps=max_steps, batch_size=8, t_max=99, seed=1, accelerator="cpu", progress=False,
                   checkpoint_every=2, log_every=1, callbacks=list(callbacks), work_dir=default_work_dir(out))
    return train_denoiser(_data(), "tiny", out, **{**options, **kwargs})


def _loss_rows(work: Path) -> list[list[int]]:
    versions = sorted((work / "logs").glob("version_*/metrics.csv"))
    return [[int(row["step"]) for row in csv.DictReader(path.open())] for path in versions]


def test_a_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    out, work = tmp_path / "den", tmp_path / "den.train"
    with pytest.raises(Killed):
        _train(out, 6, [StopAt(3)])
    assert not out.exists()  # nothing half-written as a denoiser
    saved = torch.load(work / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 2  # checkpoints every 2 steps: the kill after step 3 loses one
    assert saved["denoiser_state"]["ema"]["optimization_step"] == 2  # the EMA is in step with the weights

    starts = FirstStep()
    _train(out, 6, [starts])
    assert starts.first == [2]  # the step counter continued
    info = json.loads((out / "denoiser.json").read_text())
    assert info["trained_steps"] == 6 and info["max_steps"] == 6 and info["work_dir"] == str(work)
    unet, _ = load_denoiser(out)
    assert all(torch.isfinite(p).all() for p in unet.parameters())
    # one CSV log per start (Lightning numbers the rows from 0): before the kill, then from step 2 on
    first, second = _loss_rows(work)
    assert first == [0, 1] and second == [2, 3, 4, 5]

    again = FirstStep()
    _train(out, 6, [again])  # a finished job rerun: nothing to redo (no training starts)
    assert again.first == [] and json.loads((out / "denoiser.json").read_text())["trained_steps"] == 6
    _train(out, 8, [again])  # a larger max_steps extends it
    assert again.first == [6] and json.loads((out / "denoiser.json").read_text())["trained_steps"] == 8


def test_another_jobs_checkpoint_is_refused_and_no_resume_starts_afresh(tmp_path):
    out = tmp_path / "den"
    _train(out, 2)
    with pytest.raises(TrainingWorkDirError, match=r"another training job \(lr: 0\.0002 there, 0\.001 now\)"):
        _train(out, 2, lr=1e-3)
    starts = FirstStep()
    _train(out, 2, [starts], resume=False)
    assert starts.first == [0]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TrainingWorkDirError, match="not empty and holds no training job"):
        _train(out, 2, work_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="checkpoint_every"):
        _train(out, 2, checkpoint_every=-1)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_train_denoiser_command_resumes_after_sigkill_and_logs_the_loss(tmp_path):
    """The real thing: SIGKILL the command mid-run, rerun the same command, it continues."""
    out = tmp_path / "den"
    command = [sys.executable, "-m", "eclipse_loader.cli",
               "train-denoiser", "embedded:trusted", str(out), "--preset", "tiny", "--sparse-count", "20",
               "--batch-size", "4", "--max-steps", "400", "--checkpoint-every", "2", "--log-every", "1",
               "--accelerator", "cpu", "--no-progress", "--t-max", "99"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        deadline = time.monotonic() + 200
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if not line or line.startswith("step 5/400"):
                break
        assert lines[-1].startswith("step 5/400"), "".join(lines)[-3000:]  # the loss is printed with --no-progress
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not out.exists()
    rows = list(csv.DictReader((tmp_path / "den.train" / "logs" / "version_0" / "metrics.csv").open()))
    assert len(rows) >= 4 and all(np.isfinite(float(row["loss"])) for row in rows)  # flushed as it went

    step = torch.load(tmp_path / "den.train" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 4
    command[command.index("400")] = str(step + 2)  # the same job, to a nearer end
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=200)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert f"resuming from step {step}" in rerun.stdout, rerun.stdout[-2000:]
    assert json.loads((out / "denoiser.json").read_text())["trained_steps"] == step + 2


@pytest.mark.parametrize("flag, value", [("--ema-decay", "5"), ("--checkpoint-every", "-1"), ("--log-every", "0"),
                                         ("--max-steps", "0"), ("--lr", "0"), ("--num-nodes", "0")])
def test_train_denoiser_refuses_bad_numbers_before_any_work(tmp_path, capsys, flag, value):
    from eclipse_loader.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train-denoiser", "embedded:trusted", str(tmp_path / "den"), flag, value])
    assert exit_info.value.code == 2
    assert f"argument {flag}" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_sigterm_saves_the_step_reached_and_exits_nonzero(tmp_path):
    """A scheduler's SIGTERM (preemption) loses nothing: the state after the step in progress is saved."""
    out = tmp_path / "den"
    command = [sys.executable, "-m", "eclipse_loader.cli", "train-denoiser", "embedded:trusted", str(out),
               "--preset", "tiny", "--sparse-count", "20", "--batch-size", "4", "--max-steps", "100000",
               "--checkpoint-every", "100000", "--log-every", "1", "--accelerator", "cpu", "--no-progress",
               "--t-max", "99"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 200
        line = ""
        while time.monotonic() < deadline and not line.startswith("step 3/"):
            line = proc.stdout.readline()
            if not line:
                break
        assert line.startswith("step 3/"), proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err[-3000:]
    assert "training stopped by SIGTERM after step" in err and "rerun to resume" in err, err[-3000:]
    step = torch.load(tmp_path / "den.train" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert step >= 3  # no periodic checkpoint was due: this one was written on SIGTERM
    assert not out.exists()
    command[command.index("100000")] = str(step + 2)  # --max-steps: the rerun resumes from the SIGTERM state
    rerun = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=200)
    assert rerun.returncode == 0 and f"resuming from step {step}" in rerun.stdout, rerun.stderr[-3000:]
    assert json.loads((out / "denoiser.json").read_text())["trained_steps"] == step + 2

"""No loader error path hangs: a dying FFCV worker thread, bad mean/std, damaged betons, SIGTERM.

Each test carries a timeout, so a regression fails instead of hanging the suite.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eclipse_loader import EclipseDataModule
from eclipse_loader.data.embedded import load_embedded

from ..conftest import requires_ffcv


@pytest.fixture(scope="module")
def beton(tmp_path_factory) -> Path:
    from eclipse_loader.storage.beton import write_beton

    return write_beton(tmp_path_factory.mktemp("beton") / "small.beton", load_embedded("test").subset(range(64)),
                       progress=False)


@pytest.mark.parametrize("backend", [pytest.param("ffcv", marks=requires_ffcv), "torch"])
@pytest.mark.parametrize("argument", ["mean", "std"])
def test_mean_and_std_need_one_value_per_channel(backend, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must have 3 values"):
        EclipseDataModule(train="embedded:train", backend=backend, **{"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2),
                                                                     argument: (0.5, 0.5)})
    with pytest.raises(ValueError, match=rf"^{argument} must be 3 numbers"):
        EclipseDataModule(train="embedded:train", backend=backend, **{"mean": (0.5, 0.5, 0.5), "std": (0.2, 0.2, 0.2),
                                                                     argument: "abc"})


def _failing_op():
    from ffcv.pipeline.operation import Operation

    class Boom(Operation):
        """Raises inside FFCV's worker thread."""

        def generate_code(self):
            def boom(images, dst):
                raise OSError("boom in the loader thread")
            return boom

        def declare_state_and_memory(self, previous_state):
            return dataclasses.replace(previous_state, jit_mode=False), None

    return Boom()


@requires_ffcv
@pytest.mark.timeout(60)
def test_an_exception_in_the_loader_thread_reaches_the_caller_within_seconds(beton):
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import SimpleRGBImageDecoder
    from ffcv.loader import Loader

    from eclipse_loader.adapters.ffcv_loaders import FFCVEpochLoader, LoaderThreadError, start_epoch

    loader = Loader(str(beton), batch_size=16, num_workers=1,
                    pipelines={"image": [SimpleRGBImageDecoder(), _failing_op()], "label": [IntDecoder()]})
    iterator = start_epoch(loader)  # compiles the pipeline here, so the clock below times only the wait
    started = time.perf_counter()
    with pytest.raises(LoaderThreadError, match=r"small\.beton failed: OSError: boom in the loader thread") as info:
        next(iterator)
    assert time.perf_counter() - started < 10
    assert isinstance(info.value.__cause__, OSError)
    with pytest.raises(LoaderThreadError, match="boom"):  # the same through the epoch wrapper
        list(FFCVEpochLoader(loader, None, shuffle=False))


@requires_ffcv
@pytest.mark.timeout(60)
def test_a_shape_error_in_the_pipeline_is_raised_not_hung(beton):
    """Issue 14 item 5, below the DataModule's own check: two-channel mean/std reach Normalize."""
    from eclipse_loader.adapters.ffcv_loaders import LoaderThreadError, make_ffcv_loader
    from eclipse_loader.loading.config import Normalization

    loader = make_ffcv_loader(beton, 16, normalize=Normalization(mean=(0.5, 0.5), std=(0.2, 0.2)), num_workers=1)
    with pytest.raises(LoaderThreadError, match="small.beton failed"):
        next(iter(loader))


def _damage(path: Path, how: str) -> Path:
    data = bytearray(path.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    else:  # header overwritten with zeros
        data[:64] = bytes(64)
    damaged = path.with_name(f"{how}.beton")
    damaged.write_bytes(bytes(data))
    return damaged


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncated", "zeroed-header"])
@pytest.mark.parametrize("backend", [pytest.param("ffcv", marks=requires_ffcv), "torch"])
def test_a_damaged_beton_is_one_clear_error_naming_the_file(tmp_path, beton, backend, how):
    damaged = _damage(Path(beton), how)
    dm = EclipseDataModule(train=str(damaged), batch_size=16, backend=backend, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match=rf"{damaged.name} .*damaged"):
        dm.prepare_data()
        dm.setup("fit")
        next(iter(dm.train_dataloader()))


@requires_ffcv
@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["truncated", "zeroed-header"])
def test_make_ffcv_loader_refuses_a_damaged_beton(beton, how):
    from eclipse_loader.adapters.ffcv_loaders import make_ffcv_loader
    from eclipse_loader.storage.beton import DamagedBetonError

    damaged = _damage(Path(beton), how)
    with pytest.raises(DamagedBetonError, match=rf"{damaged.name} .*damaged"):
        make_ffcv_loader(damaged, 16)


_SLOW_VALIDATE = textwrap.dedent("""
    import sys, time
    import lightning.pytorch as pl, torch
    from torch import nn
    from eclipse_loader import EclipseDataModule
    from eclipse_loader.data.embedded import load_embedded

    class Slow(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 10)
        def validation_step(self, batch, batch_idx):
            print("validation step", batch_idx, flush=True)
            time.sleep(0.5)

    data = load_embedded("train")
    dm = EclipseDataModule.from_arrays(train=(data.images, data.labels), val=(data.images, data.labels),
                                       batch_size=8, backend=sys.argv[1], num_workers=1, cache_dir=sys.argv[2])
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(Slow(), datamodule=dm)
    print("validation finished", flush=True)
""")


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize("backend", [pytest.param("ffcv", marks=requires_ffcv), "torch"])
def test_sigterm_ends_a_running_validate(tmp_path, backend):
    """Used to hang on FFCV (dead worker, main thread waiting forever, SIGTERM swallowed by Lightning)."""
    script = tmp_path / "slow_validate.py"
    script.write_text(_SLOW_VALIDATE)
    proc = subprocess.Popen([sys.executable, str(script), backend, str(tmp_path / "cache")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:  # wait for the first validation batch
            line = proc.stdout.readline()
            lines.append(line)
            if line.startswith("validation step") or not line:
                break
        assert lines[-1].startswith("validation step"), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)  # 250 batches of 0.5 s were left: it must stop, not finish
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # stopped early (Lightning turns SIGTERM into its SIGTERMException, a SystemExit of code 0)
    assert "Received SIGTERM" in rest and "validation finished" not in rest, rest[-3000:]
    assert len([line for line in rest.splitlines() if line.startswith("validation step")]) < 100, rest[-3000:]

"""Probe of the failures a new user meets in the first hour (issue 14): each one as a command.

Every case runs the real CLI (`eclipse_loader.cli.main`, or a subprocess where a kill or a missing
extra is the point) on small data made here, and checks: one line naming the file or argument,
exit code 2, nothing left behind, nothing of the user's deleted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eclipse_loader.cli import main
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.denoiser import build_scheduler, build_unet, save_denoiser
from eclipse_loader.denoiser.io import weights_path

from ..conftest import requires_ffcv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def denoiser(tmp_path_factory) -> Path:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet("tiny")
    return save_denoiser(unet, build_scheduler(), tmp_path_factory.mktemp("den") / "tiny")


@pytest.fixture(scope="module")
def sample_npz(tmp_path_factory) -> Path:
    data = load_embedded("test")
    path = tmp_path_factory.mktemp("src") / "poisoned.npz"
    np.savez(path, images=data.images[:12], labels=data.labels[:12])
    return path


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def purify_args(src, den, out, *extra):
    return ["purify", f"npz:{src}", den, out, "--steps", "1", "--t-star", "20", "--no-progress", *extra]


# --- data loss ---------------------------------------------------------------------------------------

@requires_ffcv
def test_work_dir_beside_the_output_keeps_the_output(tmp_path, denoiser, sample_npz, capsys):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    code, _ = run_cli(purify_args(sample_npz, denoiser, out_dir / "p.beton", "--work-dir", out_dir,
                                  "--npz", out_dir / "p.npz"), capsys)
    assert code == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["p.beton", "p.beton.json", "p.npz"]


def test_work_dir_with_other_files_or_a_link_is_refused(tmp_path, denoiser, sample_npz, capsys):
    work = tmp_path / "mine"
    work.mkdir()
    (work / "thesis.tex").write_text("precious")
    code, err = run_cli(purify_args(sample_npz, denoiser, tmp_path / "p.npz", "--work-dir", work), capsys)
    assert code == 2 and "thesis.tex" in one_error_line(err)
    assert (work / "thesis.tex").read_text() == "precious"
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    code, err = run_cli(purify_args(sample_npz, denoiser, tmp_path / "q.npz", "--work-dir", tmp_path / "link"), capsys)
    assert code == 2 and "symbolic link" in one_error_line(err)
    assert list(target.iterdir()) == [] and not (tmp_path / "q.npz").exists()


def test_default_work_dir_is_removed_after_success(tmp_path, denoiser, sample_npz, capsys):
    code, _ = run_cli(purify_args(sample_npz, denoiser, tmp_path / "p.npz"), capsys)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["p.npz"]


# --- silent wrong output -----------------------------------------------------------------------------

def test_nan_weights_fail_naming_the_file(tmp_path, denoiser, sample_npz, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(denoiser, bad)
    tensors = load_file(weights_path(bad))
    name = next(iter(tensors))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, weights_path(bad))
    code, err = run_cli(purify_args(sample_npz, bad, tmp_path / "p.npz"), capsys)
    assert code == 2 and str(weights_path(bad)) in one_error_line(err) and "NaN" in err
    assert not (tmp_path / "p.npz").exists()


def test_non_finite_outputs_are_caught_per_batch():
    from eclipse_loader.purify.purifier import NonFiniteOutputError, Purifier, PurifyConfig

    unet = build_unet("tiny")
    purifier = Purifier(unet, build_scheduler(), PurifyConfig(t_star=10, steps=1), device="cpu")
    purifier.unet.register_forward_hook(lambda module, args, out: type(out)(sample=out.sample * float("nan")))
    with pytest.raises(NonFiniteOutputError, match="NaN/Inf for 2 of 2"):
        purifier.purify(load_embedded("test").images[:2], [0, 1])


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "bad-config"])
def test_damaged_denoiser_files_are_one_line(tmp_path, denoiser, sample_npz, capsys, damage):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(denoiser, bad)
    weights = weights_path(bad)
    if damage == "empty":
        weights.write_bytes(b"")
    elif damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(4096))
    else:
        (bad / "unet" / "config.json").write_text("{ not json")
    code, err = run_cli(purify_args(sample_npz, bad, tmp_path / "p.npz"), capsys)
    assert code == 2 and str(bad) in one_error_line(err)


def test_no_cuda_is_one_line(tmp_path, denoiser, sample_npz, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the no-GPU error cannot occur")
    code, err = run_cli(purify_args(sample_npz, denoiser, tmp_path / "p.npz", "--device", "cuda"), capsys)
    assert code == 2 and "no CUDA GPU" in one_error_line(err)


def test_image_size_must_match_the_denoiser(tmp_path, denoiser, capsys):
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((4, 16, 16, 3), np.uint8), labels=np.arange(4))
    code, err = run_cli(purify_args(small, denoiser, tmp_path / "p.npz"), capsys)
    assert code == 2 and "32x32" in one_error_line(err) and "16x16" in err


def test_steps_beyond_t_star_are_refused_not_clamped(tmp_path, denoiser, sample_npz, capsys):
    code, err = run_cli(["purify", f"npz:{sample_npz}", denoiser, tmp_path / "p.npz", "--steps", "1000",
                         "--no-progress"], capsys)
    assert code == 2 and "steps=1000 exceeds t*=400" in one_error_line(err)


@pytest.mark.parametrize("flag", [["--preview-count", "0"], ["--p-gray", "3"], ["--sigma", "-1"], ["--steps", "0"]])
def test_preview_and_step_flags_are_checked_before_any_work(tmp_path, denoiser, sample_npz, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(["purify", f"npz:{sample_npz}", str(denoiser), str(tmp_path / "p.npz"), *flag])
    assert exit_info.value.code == 2 and list(tmp_path.iterdir()) == []


# --- outputs -----------------------------------------------------------------------------------------

def test_output_that_is_a_directory_fails_before_purifying(tmp_path, denoiser, sample_npz, capsys):
    (tmp_path / "out.beton").mkdir()
    start = time.perf_counter()
    code, err = run_cli(purify_args(sample_npz, denoiser, tmp_path / "out.beton"), capsys)
    assert code == 2 and "is a directory" in one_error_line(err)
    assert time.perf_counter() - start < 5


def test_output_under_a_file_or_without_space_fails_first(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from eclipse_loader.output_files import OutputError, check_output

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file"):
        check_output(tmp_path / "file" / "out.beton")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 10**6, 10**6))
    with pytest.raises(OutputError, match="not enough space"):
        check_output(tmp_path / "out.beton", needed_bytes=50 * 2**20)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders: the probe cannot fail as root")
def test_read_only_output_folder_is_one_line(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_cli(["write-beton", "embedded:test", ro / "x.beton"], capsys)
    finally:
        ro.chmod(0o700)
    assert code == 2 and str(ro) in one_error_line(err)


def test_unwritable_output_folder_fails_first_even_as_root(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    def refuse(*args, **kwargs):  # what a read-only folder answers a non-root user
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", refuse)
    code, err = run_cli(["write-beton", "embedded:test", tmp_path / "x.beton"], capsys)
    assert code == 2 and "Permission denied" in one_error_line(err) and str(tmp_path) in err
    assert list(tmp_path.iterdir()) == []


@requires_ffcv
def test_second_writer_is_told_who_holds_the_lock(tmp_path, denoiser, sample_npz, capsys):
    from eclipse_loader.output_files import output_lock

    out = tmp_path / "p.beton"
    with output_lock(out):
        code, err = run_cli(purify_args(sample_npz, denoiser, out), capsys)
    assert code == 2 and f"process {os.getpid()}" in one_error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@requires_ffcv
def test_stale_temporaries_of_the_output_are_removed(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".x.beton.tmp-{dead.pid}"
    stale.write_bytes(b"half a beton")
    live = tmp_path / f".x.beton.tmp-{os.getpid()}9"  # not ours to judge unless its process is gone
    mine = tmp_path / "notes.txt"
    mine.write_text("keep")
    code, _ = run_cli(["write-beton", "embedded:test", tmp_path / "x.beton"], capsys)
    assert code == 0 and not stale.exists() and mine.exists() and not live.exists()


_KILL_SCRIPT = """
import sys, numpy as np
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.storage.beton import write_beton
rng = np.random.default_rng(0)
data = LabelledImages(rng.integers(0, 256, (60000, 32, 32, 3), dtype=np.uint8), np.zeros(60000, np.int64), 1)
write_beton(sys.argv[1], data, progress=False, num_workers=1)
"""


@requires_ffcv
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_writer_leaves_no_process_and_no_temporary(tmp_path, sig):
    out = tmp_path / "big.beton"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(out)], cwd=REPO)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".big.beton.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert children, "the writer runs in a child process"
    os.kill(proc.pid, sig)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_alive(children) or list(tmp_path.glob(".*tmp*"))):
        time.sleep(0.1)
    assert not _alive(children), "FFCV's writer outlived its parent"
    assert list(tmp_path.iterdir()) == []


def _alive(pids: list[str]) -> bool:
    for pid in pids:
        try:
            os.kill(int(pid), 0)
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] != "Z":
                    return True
        except (ProcessLookupError, FileNotFoundError):
            continue
    return False


# --- inputs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["directory", "empty", "truncated", "random"])
def test_broken_npz_is_one_line(tmp_path, capsys, kind):
    path = tmp_path / "in.npz"
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        data = load_embedded("test")
        np.savez(path, images=data.images[:50], labels=data.labels[:50])
        path.write_bytes(path.read_bytes()[:20000])
    else:
        path.write_bytes(os.urandom(5000))
    code, err = run_cli(["write-beton", f"npz:{path}", tmp_path / "x.beton"], capsys)
    line = one_error_line(err)
    assert code == 2 and str(path) in line and "allow_pickle" not in line
    assert not (tmp_path / "x.beton").exists()


def test_pickled_npz_never_invites_allow_pickle(tmp_path, capsys):
    path = tmp_path / "in.npz"
    np.savez(path, images=np.array([{"a": 1}], dtype=object), labels=np.array([0]))
    code, err = run_cli(["write-beton", f"npz:{path}", tmp_path / "x.beton"], capsys)
    assert code == 2 and "pickled" in one_error_line(err) and "allow_pickle" not in err


@pytest.mark.parametrize("label", [2**40, 10**6])
def test_absurd_labels_are_refused_and_nothing_is_left(tmp_path, capsys, label):
    path = tmp_path / "in.npz"
    labels = np.zeros(4, np.int64)
    labels[2] = label
    np.savez(path, images=np.zeros((4, 8, 8, 3), np.uint8), labels=labels)
    code, err = run_cli(["write-beton", f"npz:{path}", tmp_path / "x.beton"], capsys)
    assert code == 2 and "num-classes" in one_error_line(err) and "index 2" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


@requires_ffcv
def test_many_classes_when_asked_for_are_written_with_sparse_counts(tmp_path, capsys):
    from eclipse_loader.storage.beton import read_manifest

    path = tmp_path / "in.npz"
    np.savez(path, images=np.zeros((2, 8, 8, 3), np.uint8), labels=np.array([0, 2**40]))
    code, _ = run_cli(["write-beton", f"npz:{path}", tmp_path / "x.beton", "--num-classes", 2**40 + 1], capsys)
    assert code == 0 and read_manifest(tmp_path / "x.beton")["class_counts"] == {"0": 1, str(2**40): 1}


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_imagefolder_grayscale_and_transparent_pngs_are_refused(tmp_path, capsys, mode):
    import PIL.Image

    for k in range(2):
        (tmp_path / "imgs" / f"c{k}").mkdir(parents=True)
        PIL.Image.fromarray(np.full((8, 8, 3), 100 + k, np.uint8)).save(tmp_path / "imgs" / f"c{k}" / "a.png")
    odd = PIL.Image.new(mode, (8, 8), 128 if mode == "L" else (1, 2, 3, 128))
    odd.save(tmp_path / "imgs" / "c1" / "b.png")
    code, err = run_cli(["write-beton", f"imagefolder:{tmp_path / 'imgs'}", tmp_path / "x.beton"], capsys)
    assert code == 2 and "b.png" in one_error_line(err)
    assert not (tmp_path / "x.beton").exists()


@requires_ffcv
def test_resize_applies_to_npz_sources(tmp_path, capsys):
    from eclipse_loader.storage.beton import read_manifest

    code, _ = run_cli(["write-beton", "embedded:test", tmp_path / "x.beton", "--resize", "16", "24"], capsys)
    assert code == 0 and read_manifest(tmp_path / "x.beton")["image_shape"] == [16, 24, 3]


@requires_ffcv
@pytest.mark.parametrize("damage", ["truncated", "zeroed-header", "empty"])
def test_damaged_beton_is_named(tmp_path, damage):
    from eclipse_loader.storage.beton import DamagedBetonError, read_beton, write_beton

    path = write_beton(tmp_path / "x.beton", load_embedded("test"), progress=False)
    raw = path.read_bytes()
    path.write_bytes({"truncated": raw[: len(raw) // 2], "zeroed-header": bytes(64) + raw[64:], "empty": b""}[damage])
    with pytest.raises(DamagedBetonError, match=str(path)):
        read_beton(path)


# --- missing extra, packaging, help ------------------------------------------------------------------

_NO_FFCV = "import sys; sys.modules['ffcv'] = None; from eclipse_loader.cli import main; sys.exit(main(sys.argv[1:]))"


def test_without_ffcv_the_beton_commands_name_the_extra_and_npz_works(tmp_path, denoiser, sample_npz):
    def cli(*args):
        return subprocess.run([sys.executable, "-c", _NO_FFCV, *map(str, args)], capture_output=True, text=True,
                              cwd=REPO, timeout=300)

    for args in (["write-beton", "embedded:test", tmp_path / "x.beton"],
                 purify_args(sample_npz, denoiser, tmp_path / "p.beton")):
        result = cli(*args)
        assert result.returncode == 2, result.stderr
        assert "eclipse-loader[ffcv]" in one_error_line(result.stderr)
    assert list(tmp_path.iterdir()) == []
    result = cli(*purify_args(sample_npz, denoiser, tmp_path / "p.npz"))
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "p.npz") as archive:
        assert archive["images"].shape == (12, 32, 32, 3)


def test_version_license_and_typed_marker(capsys):
    from eclipse_loader import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"eclipse-loader {__version__}"
    assert "Apache License" in (REPO / "LICENSE").read_text()
    assert (REPO / "eclipse_loader" / "py.typed").is_file()


@pytest.mark.parametrize("command", ["purify", "train-denoiser", "write-beton", "demo"])
def test_help_has_no_doubled_percent_or_doubled_defaults(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "%%" not in text and "(default: None)" not in text
    import re

    assert not re.search(r"\(default[^)]*\)\s*\(default", text), "a default stated twice"


# --- one meaning of "default" ------------------------------------------------------------------------

def test_purify_config_defaults_are_the_default_recipe():
    from eclipse_loader.purify.purifier import PurifyConfig
    from eclipse_loader.recipes import DEFAULT_RECIPE, PAPER_RECIPE

    assert PurifyConfig() == DEFAULT_RECIPE.purify_config()
    assert (PurifyConfig().t_star, PurifyConfig().steps, PurifyConfig().repair_threshold) == (400, 2, 48)
    assert PAPER_RECIPE.purify_config() == PurifyConfig(t_star=100, steps=None, repair_threshold=None)
    assert "noise_std" not in PurifyConfig().to_dict()
    with pytest.raises(ValueError, match="exactly one of t_star and noise_std"):
        PurifyConfig(noise_std=0.05)


@requires_ffcv
def test_purified_manifest_records_only_the_settings_in_force(tmp_path, denoiser, sample_npz, capsys):
    from eclipse_loader.storage.beton import read_manifest

    code, _ = run_cli(["purify", f"npz:{sample_npz}", denoiser, tmp_path / "p.beton", "--no-progress"], capsys)
    assert code == 0
    meta = read_manifest(tmp_path / "p.beton")["metadata"]
    assert meta["t_star"] == 400 and meta["timesteps"] == 2 and "noise_std" not in meta["purification"]
    assert json.dumps(meta).count("0.05") == 0


# --- the data module ---------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["torch", pytest.param("ffcv", marks=requires_ffcv)])
def test_datamodule_refuses_a_val_set_of_another_image_size(tmp_path, backend):
    from eclipse_loader import EclipseDataModule

    small = tmp_path / "val.npz"
    np.savez(small, images=np.zeros((8, 16, 16, 3), np.uint8), labels=np.arange(8) % 10)
    dm = EclipseDataModule(train="embedded:test", val=f"npz:{small}", backend=backend, cache_dir=str(tmp_path / "c"))
    dm.prepare_data()
    with pytest.raises(ValueError, match="16x16.*32x32"):
        dm.setup("fit")


_TORCH_BACKEND_NO_FFCV = """
import sys; sys.modules['ffcv'] = None
from eclipse_loader import EclipseDataModule
dm = EclipseDataModule(train=sys.argv[1], backend="torch", purify=True, denoiser=sys.argv[2], cache_dir=sys.argv[3],
                       t_star=20, purify_steps=1, batch_size=4)
dm.prepare_data(); dm.setup("fit")
images, labels = next(iter(dm.train_dataloader()))
print(tuple(images.shape))
"""


def test_torch_backend_purifies_without_ffcv(tmp_path, denoiser, sample_npz):
    result = subprocess.run([sys.executable, "-c", _TORCH_BACKEND_NO_FFCV, f"npz:{sample_npz}", str(denoiser),
                             str(tmp_path / "cache")], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("(4, 3, 32, 32)")
    assert [p.suffix for p in (tmp_path / "cache" / "purified").iterdir()] == [".npz"]


def test_npz_output_with_npz_copy_is_refused(tmp_path, denoiser, sample_npz, capsys):
    code, err = run_cli(purify_args(sample_npz, denoiser, tmp_path / "p.npz", "--npz", tmp_path / "q.npz"), capsys)
    assert code == 2 and "already an .npz" in one_error_line(err) and list(tmp_path.iterdir()) == []

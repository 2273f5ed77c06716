"""Distributed purification (Lightning Trainer.predict + shard writer + assembly) on real CIFAR slices.

Every purification runs in its own fresh process without ffcv imported (as the CLI would), so the
single-process reference and the 2-process gloo run share one numeric environment.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eclipse_loader.denoiser import build_scheduler, build_unet, save_denoiser
from eclipse_loader.purify.run import WorkDirMismatchError
from eclipse_loader.purify.shards import (
    ShardAssemblyError, collect_shards, pending_blocks, prepare_job, save_shard, shard_path,
)

from ..conftest import requires_ffcv

REPO = Path(__file__).resolve().parents[2]
N, STEPS, BATCH, SHARD = 48, 10, 4, 8

# argv: record-file, then "single ARGS" (purify_dataset), "api ARGS" (purify_distributed) or the CLI's argv.
# Every call to Purifier.purify is logged as "pid index index ..." (Lightning's launcher re-runs this
# script for rank 1, so the log covers every process).
RUNNER = """
import os, sys
from eclipse_loader.purify import purifier
from eclipse_loader.recipes import get_recipe
recipe = get_recipe("default")  # what the CLI's purify uses unless told otherwise
config = purifier.PurifyConfig(t_star=recipe.t_star, steps=%(steps)d, repair_threshold=recipe.repair_threshold)
record = sys.argv[1]
original = purifier.Purifier.purify
def recording(self, images, indices):
    with open(record, "a") as f:
        f.write(f"{os.getpid()} " + " ".join(str(int(i)) for i in indices) + "\\n")
    return original(self, images, indices)
purifier.Purifier.purify = recording
from eclipse_loader.data.images import LabelledImages
fingerprint = LabelledImages.fingerprint
def recording_fingerprint(self):  # who reads the whole source to hash it
    with open(record + ".hashed", "a") as f:
        f.write(f"{os.getpid()}\\n")
    return fingerprint(self)
LabelledImages.fingerprint = recording_fingerprint
from eclipse_loader.data import decode
open_image = decode.open_image
def recording_open_image(path):  # which process decodes which file of an image folder
    with open(record + ".decoded", "a") as f:
        f.write(f"{os.getpid()} {path}\\n")
    return open_image(path)
decode.open_image = recording_open_image
from eclipse_loader.data import sources
unpack_npz_member = sources.unpack_npz_member
def recording_unpack(path, key, *args, **kwargs):  # which process inflates a compressed npz into a disk copy
    with open(record + ".unpacked", "a") as f:
        f.write(f"{os.getpid()}\\n")
    return unpack_npz_member(path, key, *args, **kwargs)
sources.unpack_npz_member = recording_unpack
from eclipse_loader.select import offline
offline_steps = offline.pixels_before_purification
def recording_offline_steps(recipe, images):  # which process runs a recipe's offline steps on how many images
    with open(record + ".offline", "a") as f:
        f.write(f"{os.getpid()} {len(images)}\\n")
    return offline_steps(recipe, images)
offline.pixels_before_purification = recording_offline_steps
if sys.argv[2] == "single":
    from eclipse_loader.storage.sources import load_source
    from eclipse_loader.purify.run import purify_dataset
    src, den, beton, npz = sys.argv[3:7]
    purify_dataset(load_source(src), den, beton, config=config, batch_size=%(batch)d,
                   progress=False, also_npz=npz)
elif sys.argv[2] == "api":
    from eclipse_loader.storage.sources import load_source
    from eclipse_loader.adapters.lightning_purify import purify_distributed
    src, den, beton, work, devices = sys.argv[3:8]
    purify_distributed(load_source(src), den, beton, config=config, work_dir=work,
                       batch_size=%(batch)d, accelerator="cpu", devices=int(devices), strategy="ddp",
                       progress=False, mode="shards_only")
else:
    from eclipse_loader.cli import main
    sys.exit(main(sys.argv[2:]))
""" % {"steps": STEPS, "batch": BATCH}


def _records(path: Path) -> dict[int, list[int]]:
    by_pid: dict[int, list[int]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        pid, *indices = map(int, line.split())
        by_pid.setdefault(pid, []).extend(indices)
    return by_pid


def _run(tmp: Path, record: str, *argv: str, background: bool = False):
    command = [sys.executable, str(tmp / "runner.py"), str(tmp / record), *map(str, argv)]
    # one OpenMP thread per process: on a busy 2-core machine two spinning threads per process made the
    # tiny U-Net about 100x slower (0.16 s vs 20 s for 4 images, 10 steps)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if background:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def job(tmp_path_factory, cifar):
    """One single-process reference run and one 2-process gloo run through the CLI (concurrently)."""
    tmp = tmp_path_factory.mktemp("dist")
    (tmp / "runner.py").write_text(RUNNER)
    np.savez(tmp / "in.npz", images=cifar["train_x"][:N], labels=cifar["train_y"][:N])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        den = save_denoiser(build_unet("tiny"), build_scheduler(), tmp / "den")
    src = f"npz:{tmp / 'in.npz'}"
    reference = _run(tmp, "single.txt", "single", src, den, tmp / "single.beton", tmp / "single.npz", background=True)
    _run(tmp, "ddp.txt", "purify", src, den, tmp / "ddp.beton", "--steps", STEPS, "--batch-size", BATCH,
         "--chunk-size", SHARD, "--devices", 2, "--num-nodes", 1, "--strategy", "ddp", "--accelerator", "cpu",
         "--work-dir", tmp / "shards", "--keep-work", "--npz", tmp / "ddp.npz", "--no-progress")
    out, _ = reference.communicate(timeout=300)
    assert reference.returncode == 0, out[-4000:]
    return {"tmp": tmp, "src": src, "den": den}


@requires_ffcv
@pytest.mark.slow
def test_distributed_two_gloo_ranks_match_single_process_byte_for_byte(job):
    tmp = job["tmp"]
    single, ddp = np.load(tmp / "single.npz"), np.load(tmp / "ddp.npz")
    assert single["images"].tobytes() == ddp["images"].tobytes()
    np.testing.assert_array_equal(single["labels"], ddp["labels"])
    assert (single["images"] != np.load(tmp / "in.npz")["images"]).mean() > 0.1  # it did purify
    # one FFCV chunk (< 256 samples) is written deterministically: the beton files are equal byte for byte
    assert (tmp / "single.beton").read_bytes() == (tmp / "ddp.beton").read_bytes()
    assert Path(f"{tmp}/single.beton.json").read_text() == Path(f"{tmp}/ddp.beton.json").read_text()
    ranks = _records(tmp / "ddp.txt")
    assert len(ranks) == 2, "two processes purified"
    hashed = (tmp / "ddp.txt.hashed").read_text().split()
    assert len(hashed) == 1 and int(hashed[0]) in ranks, "only global rank 0 read the whole source to hash it"
    a, b = (set(v) for v in ranks.values())
    assert not a & b and a | b == set(range(N)) and sum(map(len, ranks.values())) == N
    assert sorted(p.name for p in (tmp / "shards").glob("shard_*.npz")) == [
        shard_path(tmp / "shards", s, s + SHARD).name for s in range(0, N, SHARD)
    ]


@requires_ffcv
@pytest.mark.slow
def test_distributed_restart_at_another_world_size_computes_only_the_missing_shards(job, tmp_path):
    tmp = job["tmp"]
    work = tmp_path / "shards"
    shutil.copytree(tmp / "shards", work)
    shard_path(work, 8, 16).unlink()
    shard_path(work, 32, 40).unlink()
    broken = shard_path(work, 16, 24)
    broken.write_bytes(broken.read_bytes()[:1000])  # a damaged file is recomputed, not trusted
    (work / ".shard_000000040_000000048.npz.tmp-host-1").write_bytes(b"partial")  # leftovers are ignored
    assert pending_blocks(work, N, SHARD, (32, 32, 3)) == [(8, 16), (16, 24), (32, 40)]

    shutil.copy(tmp / "runner.py", tmp_path / "runner.py")
    # shards only (assembly through the CLI is covered above; skipping it here saves an FFCV import)
    _run(tmp_path, "resume.txt", "api", job["src"], job["den"], tmp_path / "r.beton", work, 1)
    computed = sorted(i for v in _records(tmp_path / "resume.txt").values() for i in v)
    assert computed == list(range(8, 24)) + list(range(32, 40))
    assert not (tmp_path / "r.beton").exists()
    resumed = collect_shards(work, N, (32, 32, 3))
    assert resumed.tobytes() == np.load(tmp / "single.npz")["images"].tobytes()


def _decoded(record: Path) -> dict[int, list[str]]:
    by_pid: dict[int, list[str]] = {}
    for line in record.read_text().splitlines() if record.exists() else []:
        pid, path = line.split(" ", 1)
        by_pid.setdefault(int(pid), []).append(path)
    return by_pid


def _folder(tmp: Path, cifar) -> Path:
    import PIL.Image

    root = tmp / "folder"
    for i in range(N):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        PIL.Image.fromarray(cifar["train_x"][i]).save(root / f"c{i % 2}" / f"{i:03d}.png")
    return root


def _ddp_cli(tmp: Path, record: str, src: str, den, out: Path, *extra, background=False):
    return _run(tmp, record, "purify", src, den, out, "--steps", STEPS, "--batch-size", BATCH, "--chunk-size", SHARD,
                "--devices", 2, "--num-nodes", 1, "--strategy", "ddp", "--accelerator", "cpu", "--no-progress",
                *extra, background=background)


@requires_ffcv
@pytest.mark.slow
def test_distributed_image_folder_each_rank_decodes_only_its_own_blocks(job, tmp_path, cifar):
    """An image folder is not decoded before the Trainer: each rank decodes the files of its blocks only,
    global rank 0 hashes the files without decoding them, and the output equals the eager single-process one."""
    shutil.copy(job["tmp"] / "runner.py", tmp_path / "runner.py")
    src = f"imagefolder:{_folder(tmp_path, cifar)}"
    _run(tmp_path, "single.txt", "single", src, job["den"], tmp_path / "single.beton", tmp_path / "single.npz")
    _ddp_cli(tmp_path, "ddp.txt", src, job["den"], tmp_path / "ddp.npz", "--work-dir", tmp_path / "shards")
    single, ddp = np.load(tmp_path / "single.npz"), np.load(tmp_path / "ddp.npz")
    assert single["images"].tobytes() == ddp["images"].tobytes()
    np.testing.assert_array_equal(single["labels"], ddp["labels"])
    decoded = _decoded(tmp_path / "ddp.txt.decoded")
    assert set(decoded) == set(_records(tmp_path / "ddp.txt")) and len(decoded) == 2, "both ranks decoded"
    a, b = (set(paths) for paths in decoded.values())
    assert not a & b and len(a | b) == N and len(a) == len(b) == N // 2, "each file decoded once, by its rank"
    assert len((tmp_path / "ddp.txt.hashed").read_text().split()) == 1


@requires_ffcv
@pytest.mark.slow
def test_distributed_compressed_npz_is_inflated_where_read_not_copied_by_every_rank(job, tmp_path, cifar):
    """An ``np.savez_compressed`` source is not inflated into a disk copy by any rank: each reads its blocks
    from the archive's stream, and the output equals the single-process run on the uncompressed source."""
    shutil.copy(job["tmp"] / "runner.py", tmp_path / "runner.py")
    np.savez_compressed(tmp_path / "in.npz", images=cifar["train_x"][:N], labels=cifar["train_y"][:N])
    _ddp_cli(tmp_path, "ddp.txt", f"npz:{tmp_path / 'in.npz'}", job["den"], tmp_path / "ddp.npz",
             "--work-dir", tmp_path / "shards")
    single, ddp = np.load(job["tmp"] / "single.npz"), np.load(tmp_path / "ddp.npz")
    assert single["images"].tobytes() == ddp["images"].tobytes()
    np.testing.assert_array_equal(single["labels"], ddp["labels"])
    assert len(_records(tmp_path / "ddp.txt")) == 2, "both ranks purified"
    assert not (tmp_path / "ddp.txt.unpacked").exists(), "no rank made an inflated copy"


@requires_ffcv
@pytest.mark.slow
def test_distributed_recipe_offline_steps_run_on_each_ranks_own_blocks(job, tmp_path):
    """A tuned recipe's grayscale and JPEG run where each block is purified: every rank on its own blocks
    (no rank on the whole source), with the same output as the single-process command."""
    from dataclasses import replace

    from eclipse_loader.recipes import DEFAULT_RECIPE, save_recipe

    shutil.copy(job["tmp"] / "runner.py", tmp_path / "runner.py")
    recipe = save_recipe(replace(DEFAULT_RECIPE, grayscale=True, jpeg_quality=30), tmp_path / "recipe.json")
    args = ("--recipe", recipe)
    single = _run(tmp_path, "single.txt", "purify", job["src"], job["den"], tmp_path / "single.npz", "--steps", STEPS,
                  "--batch-size", BATCH, "--no-progress", *args, background=True)
    _ddp_cli(tmp_path, "ddp.txt", job["src"], job["den"], tmp_path / "ddp.npz", "--work-dir", tmp_path / "shards", *args)
    out, _ = single.communicate(timeout=300)
    assert single.returncode == 0, out[-3000:]
    assert np.load(tmp_path / "single.npz")["images"].tobytes() == np.load(tmp_path / "ddp.npz")["images"].tobytes()
    by_pid: dict[int, int] = {}
    for line in (tmp_path / "ddp.txt.offline").read_text().splitlines():
        pid, count = map(int, line.split())
        by_pid[pid] = by_pid.get(pid, 0) + count
    assert set(by_pid) == set(_records(tmp_path / "ddp.txt")) and sorted(by_pid.values()) == [N // 2, N // 2]
    images = np.load(tmp_path / "ddp.npz")["images"]
    assert (images != np.load(job["tmp"] / "single.npz")["images"]).mean() > 0.1, "the recipe's steps changed the output"


@requires_ffcv
@pytest.mark.slow
def test_distributed_damaged_file_in_one_ranks_blocks_stops_every_rank_with_its_name(job, tmp_path, cifar):
    """A file that passes the header check but cannot be decoded, in rank 1's blocks: every rank stops with
    one line naming it (rank 0 does not wait forever at the barrier), and no output is written."""
    shutil.copy(job["tmp"] / "runner.py", tmp_path / "runner.py")
    root = _folder(tmp_path, cifar)
    damaged = root / "c0" / "020.png"  # sample 10 (c0 holds the even indices): block (8, 16), the second block
    damaged.write_bytes(damaged.read_bytes()[:60])
    run = _ddp_cli(tmp_path, "bad.txt", f"imagefolder:{root}", job["den"], tmp_path / "bad.npz",
                   "--work-dir", tmp_path / "shards", background=True)
    out, _ = run.communicate(timeout=300)
    assert run.returncode == 2, out[-3000:]
    assert "error: cannot read sample 10" in out and str(damaged) in out, out[-3000:]
    assert not (tmp_path / "bad.npz").exists()
    purified = {i for v in _records(tmp_path / "bad.txt").values() for i in v}
    assert not set(range(8, 16)) & purified
    assert set(range(0, 8)) <= purified, "the header check passed: rank 0 purified its first block before it learned"


def _fake_shards(work: Path, blocks) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 4, 4, 3), dtype=np.uint8)
    prepare_job(work, "k" * 64, N, SHARD)
    for a, b in blocks:
        save_shard(work, np.arange(a, b), images[a:b])
    return images


def test_distributed_assembly_refuses_missing_indices(tmp_path):
    images = _fake_shards(tmp_path, [(a, a + SHARD) for a in range(0, N, SHARD) if a not in (8, 24)])
    with pytest.raises(ShardAssemblyError, match=r"16 of 48 indices are in no shard .*\(8-15, 24-31\)"):
        collect_shards(tmp_path, N, (4, 4, 3))
    save_shard(tmp_path, np.arange(8, 16), images[8:16])
    save_shard(tmp_path, np.arange(24, 32), images[24:32])
    np.testing.assert_array_equal(collect_shards(tmp_path, N, (4, 4, 3)), images)


def test_distributed_assembly_refuses_duplicate_indices(tmp_path):
    images = _fake_shards(tmp_path, [(a, a + SHARD) for a in range(0, N, SHARD)])
    save_shard(tmp_path, np.arange(4, 12), images[4:12])  # a stray shard overlapping two blocks
    with pytest.raises(ShardAssemblyError, match=r"8 indices are held more than once \(4-11\); e.g. index 4 in "
                       r"shard_000000000_000000008.npz, shard_000000004_000000012.npz"):
        collect_shards(tmp_path, N, (4, 4, 3))


def test_distributed_job_manifest_refuses_shards_of_another_job(tmp_path):
    assert prepare_job(tmp_path, "a" * 64, N, SHARD) == SHARD
    assert prepare_job(tmp_path, "a" * 64, N, 16) == SHARD  # the first run's shard size stays in force
    with pytest.raises(WorkDirMismatchError, match="holds shards of another job"):
        prepare_job(tmp_path, "b" * 64, N, SHARD)
    with pytest.raises(WorkDirMismatchError, match="48 samples; this job"):
        prepare_job(tmp_path, "a" * 64, N + 1, SHARD)


def test_distributed_cli_rejects_single_process_device_flag(tmp_path, cifar, capsys):
    from eclipse_loader.cli import main

    np.savez(tmp_path / "in.npz", images=cifar["train_x"][:4], labels=cifar["train_y"][:4])
    code = main(["purify", f"npz:{tmp_path / 'in.npz'}", str(tmp_path / "den"), str(tmp_path / "o.beton"),
                 "--devices", "2", "--device", "cpu"])
    assert code == 2 and "--device selects the single-process path" in capsys.readouterr().err


class _FakeTrainer:
    """A trainer at ``global_rank`` whose broadcast hands out what rank 0 sends (``rank_zero_sends``
    on the other ranks, this rank's own object on rank 0); ``sent`` records what went in."""

    def __init__(self, global_rank, world_size, rank_zero_sends=None):
        self.global_rank, self.world_size, self.sent = global_rank, world_size, []
        self.strategy, self._from_rank_zero = self, rank_zero_sends

    def broadcast(self, obj, src=0):
        self.sent.append(obj)
        return obj if self.global_rank == 0 else self._from_rank_zero


def _shard_blocks(trainer, plan):
    from eclipse_loader.adapters.lightning_purify import ShardBlocks

    blocks = ShardBlocks(np.zeros((N, 4, 4, 3), np.uint8), plan)
    blocks.trainer = trainer
    return blocks


def test_distributed_plan_runs_on_rank_zero_only_and_reaches_every_rank():
    from eclipse_loader.adapters.lightning_purify import JobPlan

    calls = []
    plan = JobPlan("k" * 64, "d" * 64, ((8, 16),))

    def planner():
        calls.append(1)
        return plan

    zero = _shard_blocks(_FakeTrainer(0, 3), planner)
    zero.setup("predict")
    assert calls == [1] and zero.plan == plan and zero.blocks == [(8, 16), (0, 0), (0, 0)]

    def must_not_run():
        raise AssertionError("a rank other than 0 planned (hashed the whole source)")

    one = _shard_blocks(_FakeTrainer(1, 3, rank_zero_sends=plan), must_not_run)
    one.setup("predict")
    assert one.plan == plan and one.blocks == zero.blocks


def test_distributed_planning_error_on_rank_zero_is_raised_on_every_rank(tmp_path):
    from eclipse_loader.adapters.lightning_purify import _PlanFailed

    def planner():  # e.g. the work dir holds another job's shards
        raise WorkDirMismatchError(f"{tmp_path} holds shards of another job")

    zero = _shard_blocks(_FakeTrainer(0, 2), planner)
    with pytest.raises(WorkDirMismatchError, match="holds shards of another job"):
        zero.setup("predict")
    assert len(zero.trainer.sent) == 1 and isinstance(zero.trainer.sent[0], _PlanFailed), "rank 0 sent its error"
    one = _shard_blocks(_FakeTrainer(1, 2, rank_zero_sends=zero.trainer.sent[0]), planner)
    with pytest.raises(WorkDirMismatchError, match="holds shards of another job"):
        one.setup("predict")


def test_a_rank_failure_is_sent_to_the_other_ranks_as_itself_or_as_its_text():
    from eclipse_loader.adapters.lightning_purify import _portable
    from eclipse_loader.data.images import InvalidInputError

    damaged = InvalidInputError("cannot read sample 10 (/data/c0/020.png): OSError: image file is truncated")
    assert _portable(damaged) is damaged and _portable(None) is None

    class LocalError(Exception):  # defined in a function: pickle cannot find it on another rank
        pass

    sent = _portable(LocalError("the U-Net blew up"))
    assert type(sent) is RuntimeError and str(sent) == "LocalError: the U-Net blew up"

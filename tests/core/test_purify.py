"""Purifier maths, determinism (batch size, kill-and-resume), cache key, and a tiny end-to-end run."""
import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from eclipse_loader.data.images import LabelledImages, as_labelled_images
from eclipse_loader.denoiser import build_scheduler, build_unet, save_denoiser
from eclipse_loader.purify.purifier import Purifier, PurifyConfig, sample_seed, timesteps_for, to_model_range, to_uint8
from eclipse_loader.purify.noise import counter_normal
from eclipse_loader.purify.run import cache_key

from ..conftest import requires_ffcv

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def images(cifar):
    return as_labelled_images(cifar["test_x"][:48], cifar["test_y"][:48], 10)


@pytest.fixture(scope="module")
def denoiser_dir(tmp_path_factory):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet("tiny")
    return save_denoiser(unet, build_scheduler(), tmp_path_factory.mktemp("den") / "tiny")


def make_purifier(denoiser_dir, **config):
    from eclipse_loader.denoiser import load_denoiser

    unet, scheduler = load_denoiser(denoiser_dir)
    return Purifier(unet, scheduler, PurifyConfig(**config))


def cosine_abar(t: int, T: int = 4000, s: float = 0.008) -> float:
    f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


def test_default_t_star_and_closed_form_noising(denoiser_dir):
    assert (make_purifier(denoiser_dir).t_star, make_purifier(denoiser_dir).timesteps) == (400, [399, 0])  # default recipe
    p = make_purifier(denoiser_dir, t_star=100, steps=None)  # the paper's full chain
    assert p.t_star == 100 and len(p.timesteps) == 100 and p.timesteps[0] == 99 and p.timesteps[-1] == 0
    abar = cosine_abar(100)  # independent of diffusers: the cosine schedule's closed form
    assert abs(math.sqrt(1 - abar) - 0.0499) < 1e-3
    x0 = torch.rand(4, 3, 32, 32) * 2 - 1
    eps = torch.randn(4, 3, 32, 32)
    expected = math.sqrt(abar) * x0 + math.sqrt(1 - abar) * eps
    torch.testing.assert_close(p.add_noise(x0, eps), expected, atol=2e-6, rtol=0)
    torch.testing.assert_close(p.add_noise(x0, eps), build_scheduler().add_noise(x0, eps, torch.tensor([99])), atol=1e-6, rtol=0)
    assert make_purifier(denoiser_dir, t_star=None, noise_std=0.0294).t_star == 50
    assert make_purifier(denoiser_dir, t_star=150).timesteps[0] == 149


def test_first_noise_is_the_samples_own_draw(denoiser_dir, images):
    p = make_purifier(denoiser_dir, t_star=10, steps=1)
    seen = {}
    p.step = lambda x, eps, t, tp, z: seen.setdefault("x", x.clone())
    x0 = to_model_range(images.images[5:7])
    p.purify_tensor(x0, [5, 6])
    eps6 = counter_normal(0, torch.tensor([6]), 0, (3, 32, 32))  # the default noise_rng
    torch.testing.assert_close(seen["x"][1], p.add_noise(x0[1:], eps6)[0])
    seen.clear()
    q = make_purifier(denoiser_dir, t_star=10, steps=1, noise_rng="generator")
    q.step = lambda x, eps, t, tp, z: seen.setdefault("x", x.clone())
    q.purify_tensor(x0, [5, 6])
    eps6 = torch.randn((3, 32, 32), generator=torch.Generator().manual_seed(sample_seed(0, 6)))
    torch.testing.assert_close(seen["x"][1], q.add_noise(x0[1:], eps6[None])[0])


def test_ddpm_step_matches_diffusers_scheduler(denoiser_dir):
    p = make_purifier(denoiser_dir)
    sched = build_scheduler()
    x_t, eps = torch.randn(2, 3, 32, 32) * 0.1, torch.randn(2, 3, 32, 32)
    for t in (99, 42, 1):
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        ours = p.step(x_t, eps, t, t - 1, z)
        ref = sched.step(eps, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(p.step(x_t, eps, 0, -1, None), sched.step(eps, 0, x_t).prev_sample, atol=1e-5, rtol=1e-5)


def test_strided_timesteps_and_config_validation():
    assert timesteps_for(100, 10) == [99, 88, 77, 66, 55, 44, 33, 22, 11, 0]
    assert timesteps_for(100, 100) == list(range(99, -1, -1))
    with pytest.raises(ValueError, match="cannot exceed"):
        PurifyConfig(t_star=10, steps=11)
    with pytest.raises(ValueError, match="sampler"):
        PurifyConfig(sampler="euler")
    with pytest.raises(ValueError, match="t_star"):
        PurifyConfig(t_star=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PurifyConfig().t_star = 5  # type: ignore[misc]


def test_rounds_instead_of_truncating():
    levels = torch.tensor([0.4, 0.6, 254.5, 254.6, 300.0, -3.0]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    out = to_uint8(levels / 127.5 - 1.0)[0, 0, :, 0]
    assert out.tolist() == [0, 1, 254, 255, 255, 0]  # 254.5 -> 254 (ties to even), truncation would give 0 for 0.6


def test_output_identical_for_any_batch_size(denoiser_dir, images):
    p = make_purifier(denoiser_dir, steps=20)
    x = images.images[:24]
    full = p.purify(x, range(24))
    np.testing.assert_array_equal(p.purify(x, range(24)), full)  # same batch size: identical bytes
    for bs in (1, 5, 7):  # other batch sizes: at most one grey level, on at most 0.01% of the pixels
        parts = np.concatenate([p.purify(x[i : i + bs], range(i, min(i + bs, 24))) for i in range(0, 24, bs)])
        assert np.abs(parts.astype(int) - full).max() <= 1, f"batch size {bs}"
        assert (parts != full).mean() <= 1e-4, f"batch size {bs}: {(parts != full).sum()} pixels differ"
    # the noise really depends on (seed, index): another seed or other indices change the output
    assert (make_purifier(denoiser_dir, steps=20, seed=1).purify(x, range(24)) != full).mean() > 0.1
    assert (p.purify(x, range(100, 124)) != full).mean() > 0.1


def test_cache_key_tracks_inputs(denoiser_dir, images, tmp_path):
    key = cache_key(images, PurifyConfig(), denoiser_dir)
    assert key == cache_key(images, PurifyConfig(), denoiser_dir)
    assert key != cache_key(images, PurifyConfig(steps=10), denoiser_dir)
    pixels = images.images.copy()
    pixels[3, 4, 5, 0] ^= 1
    assert key != cache_key(LabelledImages(pixels, images.labels, 10), PurifyConfig(), denoiser_dir)
    labels = images.labels.copy()
    labels[0] = (labels[0] + 1) % 10
    assert key != cache_key(LabelledImages(images.images, labels, 10), PurifyConfig(), denoiser_dir)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        other = save_denoiser(build_unet("tiny"), build_scheduler(), tmp_path / "other")
    assert key != cache_key(images, PurifyConfig(), other)


RESUME_SCRIPT = """
import sys, numpy as np
from eclipse_loader.data.images import LabelledImages
from eclipse_loader.purify import purifier
from eclipse_loader.purify.run import purify_dataset
inp, den, beton, work, npz, batch, chunk, record = sys.argv[1:9]
if record != '-':  # log every index this process purifies
    original = purifier.Purifier.purify
    def recording(self, images, indices):
        with open(record, 'a') as f:
            f.write(' '.join(str(int(i)) for i in indices) + '\\n')
        return original(self, images, indices)
    purifier.Purifier.purify = recording
arrays = np.load(inp)
data = LabelledImages(arrays['images'], arrays['labels'], 10)
purify_dataset(data, den, beton, config=purifier.PurifyConfig(steps=10), work_dir=None if work == '-' else work,
               batch_size=int(batch), chunk_size=int(chunk), progress=False, also_npz=npz)
"""


@requires_ffcv
@pytest.mark.slow
def test_kill_and_resume_gives_each_sample_once(denoiser_dir, images, tmp_path):
    # every run is a fresh process (as with the CLI), so the killed, resumed and reference runs share one environment
    np.savez(tmp_path / "in.npz", images=images.images, labels=images.labels)
    work, record = tmp_path / "work", tmp_path / "computed.txt"
    script = tmp_path / "run.py"
    script.write_text(RESUME_SCRIPT)

    def command(beton, npz, batch, chunk, work_dir, log):
        return [sys.executable, str(script), str(tmp_path / "in.npz"), str(denoiser_dir), str(tmp_path / beton),
                str(work_dir), str(tmp_path / npz), str(batch), str(chunk), str(log)]

    proc = subprocess.Popen(command("a.beton", "a.npz", 4, 4, work, "-"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(list(work.glob("shard_*.npz"))) < 3:
            assert proc.poll() is None, "purification ended before it could be killed"
            assert time.monotonic() < deadline, "no chunk finished in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {tuple(int(v) for v in p.stem.split("_")[1:]) for p in work.glob("shard_*.npz")}
    assert 3 <= len(done) < 12, done
    done_idx = [i for a, b in done for i in range(a, b)]

    subprocess.run(command("a.beton", "a.npz", 4, 4, work, record), cwd=REPO, check=True, capture_output=True)
    computed = [int(v) for v in record.read_text().split()]
    assert sorted(computed + done_idx) == list(range(48)), "every sample exactly once across the two runs"
    assert not set(computed) & set(done_idx)
    assert work.is_dir() and list(work.iterdir()) == []  # the job's files removed; the user's folder kept

    subprocess.run(command("b.beton", "b.npz", 16, 48, "-", "-"), cwd=REPO, check=True, capture_output=True)
    resumed, straight = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    np.testing.assert_array_equal(resumed["images"], straight["images"])
    np.testing.assert_array_equal(resumed["labels"], images.labels)
    assert (resumed["images"] != images.images).mean() > 0.1  # it did purify


@requires_ffcv
@pytest.mark.slow
def test_end_to_end_cli_on_cifar(tmp_path, capsys, cifar):
    from eclipse_loader.cli import main
    from eclipse_loader.storage.beton import read_beton, read_manifest

    archive = cifar
    np.savez(tmp_path / "trusted.npz", images=archive["train_x"][:200], labels=archive["train_y"][:200])
    np.savez(tmp_path / "eval.npz", images=archive["test_x"][:100], labels=archive["test_y"][:100])
    np.savez(tmp_path / "poisoned.npz", images=archive["train_x"][1000:1020], labels=archive["train_y"][1000:1020])
    den = tmp_path / "den"
    assert main(["train-denoiser", f"npz:{tmp_path / 'trusted.npz'}", str(den), "--preset", "tiny", "--sparse-count",
                 "40", "--eval-source", f"npz:{tmp_path / 'eval.npz'}", "--max-steps", "5", "--batch-size", "8",
                 "--t-max", "150", "--accelerator", "cpu", "--no-progress"]) == 0
    out, png = tmp_path / "pure.beton", tmp_path / "preview.png"
    # the default recipe's t*=400 needs a denoiser trained up to t=399: refused with the fix named, nothing written
    try:
        code = main(["purify", f"npz:{tmp_path / 'poisoned.npz'}", str(den), str(out), "--device", "cpu", "--no-progress"])
    except SystemExit as exit_:
        code = exit_.code
    assert code != 0 and "--t-max 399" in capsys.readouterr().err
    assert not out.exists() and not out.with_name(out.name + ".work").exists()
    assert main(["purify", f"npz:{tmp_path / 'poisoned.npz'}", str(den), str(out), "--recipe", "paper", "--steps", "10",
                 "--batch-size", "8", "--device", "cpu", "--preview", str(png), "--preview-count", "4",
                 "--work-dir", str(tmp_path / "work"), "--keep-work", "--no-progress"]) == 0
    # another job into the kept work dir: one clear line naming the problem, the kept chunks untouched
    kept = sorted((tmp_path / "work").iterdir())
    assert main(["purify", f"npz:{tmp_path / 'poisoned.npz'}", str(den), str(tmp_path / "other.beton"), "--recipe",
                 "paper", "--steps", "5", "--device", "cpu", "--work-dir", str(tmp_path / "work"), "--no-progress"]) == 2
    assert "holds" in capsys.readouterr().err and sorted((tmp_path / "work").iterdir()) == kept
    assert not (tmp_path / "other.beton").exists()
    result = read_beton(out)
    with np.load(tmp_path / "poisoned.npz") as src:
        assert result.images.shape == src["images"].shape
        np.testing.assert_array_equal(result.labels, src["labels"])
        assert not np.array_equal(result.images, src["images"])
    meta = read_manifest(out)["metadata"]
    assert meta["t_star"] == 100 and meta["timesteps"] == 10 and len(meta["denoiser_sha256"]) == 64
    from PIL import Image

    width, height = Image.open(png).size
    assert width > height > 3 * 32  # 3 rows of 4 upscaled images

    # the eval set overlapping the sparse set is refused by the CLI
    try:
        code = main(["train-denoiser", f"npz:{tmp_path / 'eval.npz'}", str(tmp_path / "bad"), "--preset", "tiny",
                     "--all", "--eval-source", f"npz:{tmp_path / 'eval.npz'}", "--max-steps", "1", "--no-progress"])
    except SystemExit as exit_:  # the CLI may report errors through argparse
        code = exit_.code
    assert code != 0
    assert "100 of 100 sparse-set images also appear in the evaluation set" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

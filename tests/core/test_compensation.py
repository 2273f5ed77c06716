"""CorruptionCompensation (torch) and CompensateFFCV (numba): semantics, statistics and exact agreement.

The noise generator's own statistics and golden values are in test_compensation_noise.py; CompensateFFCV
inside real FFCV loaders (epochs, compile cache) in test_compensation_ffcv.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from eclipse_loader import CorruptionCompensation
from eclipse_loader.compensation.functional import luma_uint8
from eclipse_loader.data.embedded import load_embedded
from eclipse_loader.loading.config import AugmentConfig
from eclipse_loader.recipes import DEFAULT_RECIPE, PAPER_RECIPE

from ..conftest import requires_ffcv


@pytest.fixture(scope="module")
def cifar() -> dict[str, np.ndarray]:
    """The embedded CIFAR-10 sample (2,000 training images), in the layout these tests index."""
    return {"train_x": load_embedded("train").images}


def _chw(images_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_nhwc).permute(0, 3, 1, 2).contiguous()


def test_zero_strength_is_exactly_the_identity(cifar):
    batch = _chw(cifar["train_x"][:64])
    comp = CorruptionCompensation(p_gray=0, sigma=0)
    assert torch.equal(comp.compensate(batch, torch.arange(64)), batch)
    assert torch.equal(comp(batch), batch)
    assert torch.equal(comp(batch[0]), batch[0])


def test_luma_matches_pil_convert_L(cifar):
    import PIL.Image

    images = cifar["train_x"][:32]
    ours = luma_uint8(_chw(images))[:, 0].numpy()
    pil = np.stack([np.asarray(PIL.Image.fromarray(im).convert("L")) for im in images])
    assert np.array_equal(ours, pil)


def test_grayscale_fraction_and_noise_statistics():
    n = 4000
    flat = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    flat[:, 0] = 200  # coloured, so grayscale is visible
    gray_only = CorruptionCompensation(p_gray=0.4, sigma=0, seed=1).compensate(flat, torch.arange(n))
    is_gray = (gray_only[:, 0] == gray_only[:, 1]).flatten(1).all(1)
    assert abs(is_gray.float().mean().item() - 0.4) < 0.03  # 4000 Bernoulli(0.4): std 0.008

    mid = torch.full((n, 3, 8, 8), 128, dtype=torch.uint8)
    noisy = CorruptionCompensation(p_gray=0, sigma=0.05, seed=2).compensate(mid, torch.arange(n)).double() - 128
    assert abs(noisy.mean().item()) < 0.05
    assert abs(noisy.std().item() - np.sqrt(12.75**2 + 1 / 12)) < 0.05  # noise plus rounding
    channels = noisy.flatten(2)
    corr = torch.corrcoef(torch.stack([channels[:, 0].flatten(), channels[:, 1].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.01  # independent per channel, even on grayscale samples


def test_draws_are_keyed_by_seed_epoch_and_index_not_by_batch(cifar):
    batch = _chw(cifar["train_x"][:50])
    idx = torch.arange(100, 150)
    comp = CorruptionCompensation(seed=5)
    whole = comp.compensate(batch, idx)
    pieces = torch.cat([comp.compensate(batch[i : i + 7], idx[i : i + 7]) for i in range(0, 50, 7)])
    assert torch.equal(whole, pieces)
    assert torch.equal(comp.compensate(batch[3], 103), whole[3])
    reversed_order = comp.compensate(batch.flip(0), idx.flip(0)).flip(0)
    assert torch.equal(reversed_order, whole)
    comp.set_epoch(1)
    assert (comp.compensate(batch, idx) != whole).float().mean() > 0.5  # redrawn next epoch
    assert not torch.equal(CorruptionCompensation(seed=6).compensate(batch, idx), whole)


def test_v2_compose_and_per_sample_grayscale_without_indices(cifar):
    pipeline = v2.Compose([v2.RandomHorizontalFlip(), CorruptionCompensation(p_gray=0.5, sigma=0), v2.ToDtype(torch.float32, scale=True)])
    torch.manual_seed(0)
    out = pipeline(_chw(cifar["train_x"][:200]))
    assert out.dtype == torch.float32 and out.shape == (200, 3, 32, 32)
    gray = (out[:, 0] == out[:, 1]).flatten(1).all(1).float().mean().item()
    assert 0.3 < gray < 0.7  # per sample, not all-or-nothing per batch
    torch.manual_seed(0)
    assert torch.equal(pipeline(_chw(cifar["train_x"][:200])), out)


def test_after_to_image_in_a_per_sample_pipeline(cifar):
    # what a torchvision user writes: uint8 HWC numpy -> ToImage (a tv_tensors.Image) -> ... -> ToDtype
    from torchvision import tv_tensors

    pipeline = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), CorruptionCompensation(), v2.ToDtype(torch.float32, scale=True)])
    out = pipeline(cifar["train_x"][0])
    assert isinstance(out, tv_tensors.Image) and out.dtype == torch.float32 and out.shape == (3, 32, 32)
    plain = CorruptionCompensation(p_gray=0, sigma=0)(torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert type(plain) is torch.Tensor


def test_bad_arguments_and_inputs_are_refused():
    with pytest.raises(ValueError, match="p_gray"):
        CorruptionCompensation(p_gray=1.5)
    with pytest.raises(ValueError, match="sigma"):
        CorruptionCompensation(sigma=-0.1)
    with pytest.raises(TypeError, match="uint8"):
        CorruptionCompensation()(torch.rand(3, 8, 8))


@requires_ffcv
@pytest.mark.parametrize("compiled", [True, False])
def test_ffcv_operation_equals_torch_transform_exactly(cifar, compiled):
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    images = cifar["train_x"][:64]
    indices = np.arange(5000, 5064, dtype=np.uint64)
    was_enabled, was_threads = Compiler.is_enabled, Compiler.num_threads
    try:
        Compiler.set_enabled(compiled)
        Compiler.set_num_threads(2)
        op = CompensateFFCV(p_gray=0.4, sigma=0.05, seed=11)
        state = State(jit_mode=True, device=torch.device("cpu"), shape=(32, 32, 3), dtype=np.dtype("u1"))
        _, query = op.declare_state_and_memory(state)
        fn = Compiler.compile(op.generate_code())
        for epoch in (0, 3):
            op.set_epoch(epoch)
            out = fn(images, np.empty((64, *query.shape), np.uint8), indices)
            ref = CorruptionCompensation(0.4, 0.05, seed=11)
            ref.set_epoch(epoch)
            expected = ref.compensate(_chw(images), torch.from_numpy(indices.astype(np.int64))).permute(0, 2, 3, 1).numpy()
            assert np.array_equal(out, expected), f"epoch {epoch}: {(out != expected).sum()} values differ"
        assert not np.array_equal(out, images)
    finally:
        Compiler.set_enabled(was_enabled)
        Compiler.set_num_threads(was_threads)


@requires_ffcv
@pytest.mark.parametrize("p_gray,sigma", [(0.0, 0.05), (1.0, 0.05), (0.4, 0.0), (1.0, 0.0), (0.4, 1.0), (0.2, 0.03)])
@pytest.mark.parametrize("height,width", [(32, 32), (7, 13)])
def test_ffcv_kernel_equals_torch_for_all_settings_sizes_and_layouts(cifar, p_gray, sigma, height, width):
    """Runs of the noise table cross the image's end (7 x 13 x 3 = 273 values, not a multiple of 64);
    the source may be a strided view (the op accepts any layout)."""
    from ffcv.pipeline.compiler import Compiler
    from ffcv.pipeline.state import State

    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    images = np.ascontiguousarray(cifar["train_x"][:40, :height, 32 - width:])
    strided = cifar["train_x"][:40, :height, ::-1][:, :, :width]  # a non-contiguous view
    indices = np.arange(40, dtype=np.uint64) * 7
    op = CompensateFFCV(p_gray=p_gray, sigma=sigma, seed=3)
    _, query = op.declare_state_and_memory(State(True, torch.device("cpu"), (height, width, 3), np.dtype("u1")))
    op.set_epoch(2)
    fn = Compiler.compile(op.generate_code())
    ref = CorruptionCompensation(p_gray, sigma, seed=3)
    for src in (images, strided):
        out = fn(src, np.full((40, *query.shape), 17, np.uint8), indices)
        expected = ref.compensate(_chw(np.ascontiguousarray(src)), torch.from_numpy(indices.astype(np.int64)), epoch=2)
        assert np.array_equal(out, expected.permute(0, 2, 3, 1).numpy())
    if p_gray or sigma:
        assert not np.array_equal(out, strided)


def test_defaults_come_from_the_default_recipe():
    comp, config = CorruptionCompensation(), AugmentConfig()
    assert (comp.p_gray, comp.sigma) == (config.p_gray, config.sigma) == (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma)
    assert (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma) != (PAPER_RECIPE.p_gray, PAPER_RECIPE.sigma)
    paper = CorruptionCompensation(PAPER_RECIPE.p_gray, PAPER_RECIPE.sigma)
    assert (paper.p_gray, paper.sigma) == (0.4, 0.05)


@requires_ffcv
def test_ffcv_operation_defaults_come_from_the_default_recipe():
    from eclipse_loader.adapters.ffcv_compensation import CompensateFFCV

    op = CompensateFFCV()
    assert (op.p_gray, op.sigma) == (DEFAULT_RECIPE.p_gray, DEFAULT_RECIPE.sigma)


def test_masks_boxes_and_labels_pass_through_a_v2_pipeline_unchanged(cifar):
    """As torchvision's photometric transforms do: only images are corrupted."""
    from torchvision import tv_tensors

    image = tv_tensors.Image(_chw(cifar["train_x"][:1])[0])
    mask = tv_tensors.Mask(torch.randint(0, 5, (32, 32), dtype=torch.uint8))
    masks = tv_tensors.Mask(torch.randint(0, 2, (3, 32, 32), dtype=torch.uint8))  # 3 "channels": still a mask
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[1, 2, 10, 12], [0, 0, 31, 31]]), format="XYXY", canvas_size=(32, 32))
    sample = {"image": image, "mask": mask, "masks": masks, "boxes": boxes, "label": 3}
    pipeline = v2.Compose([v2.RandomHorizontalFlip(p=1.0), CorruptionCompensation(p_gray=1.0, sigma=0.1)])
    torch.manual_seed(0)
    out = pipeline(sample)
    assert isinstance(out["mask"], tv_tensors.Mask) and torch.equal(out["mask"], mask.flip(-1))
    assert torch.equal(out["masks"], masks.flip(-1))
    assert isinstance(out["boxes"], tv_tensors.BoundingBoxes)
    assert torch.equal(out["boxes"], v2.RandomHorizontalFlip(p=1.0)(boxes))
    assert out["label"] == 3
    assert isinstance(out["image"], tv_tensors.Image)
    assert not torch.equal(out["image"], image.flip(-1))  # the image itself was corrupted
    alone = CorruptionCompensation(sigma=0.1)(masks)  # a Mask on its own is still passed through
    assert torch.equal(alone, masks)

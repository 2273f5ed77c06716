"""Shared fixtures: small slices of the real CIFAR-10 (../shared/data/cifar10.npz) and tiny betons."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from eclipse_loader.data.images import LabelledImages, as_labelled_images

CIFAR_NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10.npz"


def _ffcv_importable() -> bool:
    from eclipse_loader.adapters.lightning_datamodule import ffcv_available

    return ffcv_available()


requires_ffcv = pytest.mark.skipif(
    not _ffcv_importable() and os.environ.get("ECLIPSE_REQUIRE_FFCV") != "1",
    reason="ffcv not importable (set ECLIPSE_REQUIRE_FFCV=1 to make this a failure)",
)


@pytest.fixture(scope="session")
def cifar() -> dict[str, np.ndarray]:
    if not CIFAR_NPZ.exists():
        pytest.fail(f"test data missing: {CIFAR_NPZ}")
    with np.load(CIFAR_NPZ) as archive:
        return {k: archive[k] for k in ("train_x", "train_y", "test_x", "test_y")}


@pytest.fixture(scope="session")
def cifar_small(cifar) -> LabelledImages:
    """The first 600 CIFAR-10 training images."""
    return as_labelled_images(cifar["train_x"][:600], cifar["train_y"][:600], num_classes=10)


@pytest.fixture(scope="session")
def cifar_test_small(cifar) -> LabelledImages:
    return as_labelled_images(cifar["test_x"][:300], cifar["test_y"][:300], num_classes=10)


@pytest.fixture(scope="session")
def small_beton(tmp_path_factory, cifar_small) -> Path:
    from eclipse_loader.storage.beton import write_beton

    return write_beton(tmp_path_factory.mktemp("beton") / "train.beton", cifar_small, progress=False)


@pytest.fixture
def thread_count():
    return threading.active_count

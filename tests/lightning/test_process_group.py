"""`release_started_process_group`: a group the block started is destroyed, the caller's group is kept."""
from __future__ import annotations

import pytest
import torch.distributed as dist

from eclipse_loader.adapters.process_group import release_started_process_group


def _start(tmp_path, name: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / name}", rank=0, world_size=1)


@pytest.fixture(autouse=True)
def _no_group_left():
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_a_group_started_inside_the_block_is_destroyed(tmp_path):
    with release_started_process_group():
        _start(tmp_path, "store")
        assert dist.is_initialized()
    assert not dist.is_initialized()


def test_the_callers_group_is_left_alone(tmp_path):
    _start(tmp_path, "store")
    with release_started_process_group():
        pass
    assert dist.is_initialized()


def test_as_a_decorator_it_releases_on_each_call(tmp_path):
    @release_started_process_group()
    def run(name: str) -> str:
        _start(tmp_path, name)
        return name

    assert run("a") == "a" and not dist.is_initialized()
    assert run("b") == "b" and not dist.is_initialized()


def test_an_exception_propagates_and_the_group_is_not_torn_down_under_it(tmp_path):
    with pytest.raises(RuntimeError, match="rank failed"):
        with release_started_process_group():
            _start(tmp_path, "store")
            raise RuntimeError("rank failed")
    assert dist.is_initialized()  # destroying under a failure can hang the other ranks

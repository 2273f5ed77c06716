"""Release the process group that a Lightning run started, so that the process exits cleanly.

Lightning's DDP strategies call ``torch.distributed.init_process_group`` inside ``fit``/``predict`` and leave
the group alive when they return. A gloo group still alive at interpreter exit can abort the process
("terminate called without an active exception", exit status -6: its worker threads are still joinable when
the C++ runtime tears down); PyTorch asks every process to call ``destroy_process_group`` once it no longer
communicates. A group the caller had started before is the caller's and is left alone.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch.distributed as dist


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


@contextmanager
def release_started_process_group() -> Iterator[None]:
    """Destroy, on normal exit of the block, a default process group that the block started.

    Not on an exception: destroying a group while another rank may still be inside a collective can hang
    (the error reaches the caller instead, and the launcher ends the ranks).
    """
    started_before = _initialised()
    yield
    if not started_before and _initialised():
        dist.destroy_process_group()

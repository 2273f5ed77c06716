"""Small torch helpers every layer may use (a floor module: it imports nothing of eclipse_loader)."""
from __future__ import annotations

import contextlib
from typing import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own flag afterwards (a sliced
    ``nn.Sequential`` has its own ``training`` flag, so ``model.train(was_training)`` is not enough)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag

"""Hooks that make a U-Net's per-sample result independent of the rest of its batch on CPU.

See `eclipse_loader.purify.purifier` for what this does and does not guarantee (identical bytes at
equal batch size; across batch sizes, rarely, one grey level).
"""
from __future__ import annotations

from typing import Any

import torch


def _rowwise_linear_hook(module: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> Any:
    x = inputs[0]
    if x.ndim != 2:
        return None
    unique, inverse = torch.unique(x, dim=0, return_inverse=True)
    rows = torch.cat([torch.nn.functional.linear(row[None], module.weight, module.bias) for row in unique])
    return rows[inverse].to(output.dtype)


def _contiguous_input_hook(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
    return tuple(x.contiguous() if isinstance(x, torch.Tensor) else x for x in inputs)


def make_batch_invariant(unet: torch.nn.Module) -> list[Any]:
    """Hook ``unet`` so a sample's result does not depend on what else is in its batch.

    * ``Linear`` on 2-D inputs: computed one distinct row at a time (GEMM rounding depends on the
      row count).
    * ``GroupNorm`` and ``Conv2d``: input made NCHW-contiguous first. oneDNN convolutions return
      channels-last tensors, torch's channels-last GroupNorm splits work across threads by batch
      size, and diffusers' ``Upsample2D`` changes the memory format only for batches >= 64, which
      makes the next convolution choose another algorithm.

    Returns the hook handles (call ``.remove()`` on each to undo). Idempotent per module.
    """
    handles = []
    for module in unet.modules():
        if getattr(module, "_eclipse_invariant", False):
            continue
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(_rowwise_linear_hook))
        elif isinstance(module, (torch.nn.GroupNorm, torch.nn.Conv2d)):
            handles.append(module.register_forward_pre_hook(_contiguous_input_hook))
        else:
            continue
        module._eclipse_invariant = True  # type: ignore[assignment]
    return handles

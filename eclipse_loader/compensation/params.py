"""Validation of the compensation's parameters (torch-free: the loader configs use it too)."""
from __future__ import annotations


def check_compensation_args(p_gray: float, sigma: float, seed: int) -> None:
    """Raise ValueError unless ``0 <= p_gray <= 1``, ``sigma >= 0`` and ``seed`` is a non-negative int."""
    if not 0.0 <= float(p_gray) <= 1.0:
        raise ValueError(f"p_gray must be in [0, 1], got {p_gray}")
    if not float(sigma) >= 0.0:
        raise ValueError(f"sigma must be >= 0 (in [0,1] pixel units), got {sigma}")
    if int(seed) != seed or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")

"""Tensor helpers shared by transforms, metrics and engines."""

from __future__ import annotations

import torch

__all__ = ["argmax_indices"]


def argmax_indices(x: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """``torch.argmax(x, dim, keepdim)``, the same indices (first maximum on ties, NaN counted as the maximum), faster.

    On CPU, torch 2.13's ``argmax`` over a short leading axis (the class axis of ``(K, H, W, T)`` scores) is several
    times slower than ``torch.max(x, dim).indices``, which returns identical indices (``scripts/benchmark.py
    postprocess``: 9.2x for a 40-frame 749 x 709 two-class cine on one core, ``docs/performance.md`` §9b).
    """
    return torch.max(x, dim=dim, keepdim=keepdim).indices

"""The ``cpu`` scan backend.

For now the CPU backend runs the exact chunked PyTorch scan (:func:`vivim_monai.ops.reference.selective_scan_chunked`)
restricted to CPU tensors; the compiled OpenMP kernel that replaces it is tracked separately (fast CPU scan issue).
Keeping the backend name stable lets configs and ``VIVIM_SCAN_BACKEND=cpu`` work unchanged when the kernel lands.
"""

from __future__ import annotations

import torch

from vivim_monai.ops.reference import selective_scan_chunked

__all__ = ["is_available", "selective_scan"]


def is_available() -> bool:
    """Whether the CPU backend can run on this machine."""
    return True


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Selective scan on CPU tensors (same contract as :func:`vivim_monai.ops.selective_scan`)."""
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

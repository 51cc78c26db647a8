"""Public selective-scan and causal-conv1d entry points with backend dispatch (see :mod:`.backends`)."""

from __future__ import annotations

import torch

from vivim_monai.ops import cpu_kernel
from vivim_monai.ops.backends import cuda_kernels, resolve_backend
from vivim_monai.ops.reference import causal_conv1d_torch, check_scan_inputs, selective_scan_chunked

__all__ = ["causal_conv1d", "selective_scan"]


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
    backend: str | None = None,
) -> torch.Tensor:
    """Mamba selective scan with mamba-ssm's ``selective_scan_fn`` argument order and shapes.

    Args:
        u, delta: (batch, dim, length).
        A: (dim, d_state), real.
        B, C: (batch, d_state, length), or grouped (batch, groups, d_state, length).
        D: optional (dim,) skip connection.
        z: optional (batch, dim, length) gate, applied as ``y * silu(z)``.
        delta_bias: optional (dim,) added to delta before the softplus.
        delta_softplus: apply softplus to delta.
        backend: ``"cuda"``, ``"cpu"``, ``"torch"``, ``"auto"`` or None (environment / automatic).

    Returns:
        (batch, dim, length) in ``u.dtype``; accumulation is in fp32 (fp64 for fp64 inputs).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    if name == "cuda":
        scan_fn = cuda_kernels()[0]
        return scan_fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if name == "cpu":
        return cpu_kernel.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d (causal-conv1d's ``causal_conv1d_fn`` semantics).

    Args:
        x: (batch, dim, length).
        weight: (dim, width) or an ``nn.Conv1d`` depthwise weight (dim, 1, width).
        bias: optional (dim,).
        activation: None, ``"silu"`` or ``"swish"``.
        backend: as for :func:`selective_scan`; only ``cuda`` differs from the PyTorch convolution.
    """
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight.squeeze(1)
    if resolve_backend(backend, x.device) == "cuda":
        conv_fn = cuda_kernels()[1]
        return conv_fn(x, weight, bias, activation)
    return causal_conv1d_torch(x, weight, bias, activation)

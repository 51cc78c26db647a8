"""Public selective-scan and causal-conv1d entry points with backend dispatch (see :mod:`.backends`)."""

from __future__ import annotations

import torch

from vivim_monai.ops import cpu_kernel
from vivim_monai.ops.backends import cuda_kernels, resolve_backend
from vivim_monai.ops.reference import (
    causal_conv1d_torch,
    check_conv_inputs,
    check_scan_inputs,
    selective_scan_chunked,
)
from vivim_monai.ops.scan_order import ScanOrder

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
    scan_order: ScanOrder | None = None,
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
        scan_order: visit the positions in this order (an extension of mamba-ssm's API; default: memory order).
            Inputs and output stay in memory order.

    Returns:
        (batch, dim, length) in ``u.dtype``; accumulation is in fp32 (fp64 for fp64 inputs).
    """
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    order = scan_order or ScanOrder()
    order.check_length(u.shape[-1])
    name = resolve_backend(backend, u.device)
    if name == "cpu":
        return cpu_kernel.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, order)
    u, delta, B, C = (order.to_scan(t) for t in (u, delta, B, C))
    z = None if z is None else order.to_scan(z)
    if name == "cuda":
        out = cuda_kernels()[0](
            u.contiguous(),
            delta.contiguous(),
            A,
            B.contiguous(),
            C.contiguous(),
            D,
            None if z is None else z.contiguous(),
            delta_bias,
            delta_softplus,
        )
    else:
        out = selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    return order.from_scan(out)


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    backend: str | None = None,
    scan_order: ScanOrder | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d (causal-conv1d's ``causal_conv1d_fn`` semantics).

    Args:
        x: (batch, dim, length).
        weight: (dim, width) or an ``nn.Conv1d`` depthwise weight (dim, 1, width).
        bias: optional (dim,).
        activation: None, ``"silu"`` or ``"swish"``.
        backend: as for :func:`selective_scan`.
        scan_order: causal along this order (default: memory order); input and output stay in memory order.
    """
    weight = check_conv_inputs(x, weight, activation)
    order = scan_order or ScanOrder()
    order.check_length(x.shape[-1])
    name = resolve_backend(backend, x.device)
    if name == "cpu":
        return cpu_kernel.causal_conv1d(x, weight, bias, activation is not None, order)
    x = order.to_scan(x)
    if name == "cuda":
        out = cuda_kernels()[1](x.contiguous(), weight.contiguous(), bias, activation=activation)
    else:
        out = causal_conv1d_torch(x, weight, bias, activation)
    return order.from_scan(out)

"""Pure-PyTorch selective scan and causal depthwise conv1d.

Semantics follow ``selective_scan_ref`` / ``causal_conv1d_ref`` of mamba-ssm and causal-conv1d
(Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", arXiv 2312.00752):

    delta = softplus(delta + delta_bias)                       (optional bias and softplus)
    h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t   (h_{-1} = 0, per channel d and state n)
    y_t   = <C_t, h_t> + D * u_t
    y     = y * silu(z)                                        (optional gate)

Two implementations are kept:

* :func:`selective_scan_sequential` is the plain loop over the sequence, the ground truth for tests.
* :func:`selective_scan_chunked` splits the sequence into chunks of ``K`` positions, runs the recurrence
  inside all chunks at once (``K`` vectorised steps), then carries the chunk-end states across chunks
  (``L / K`` tiny steps) and adds ``C_t * exp(A * cumsum(delta)_t) * carry`` back. It is exact (decays are
  only ever multiplied, never divided, so large ``|delta * A|`` cannot overflow), never materialises the
  (b, d, L, N) state, is differentiable by autograd and runs on any device, in about ``3 * sqrt(L)``
  Python steps instead of ``L``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "VIVIM_STAGE_SCAN_SIZES",
    "vivim_scan_inputs",
    "causal_conv1d_torch",
    "selective_scan_chunked",
    "selective_scan_sequential",
    "as_grouped",
    "check_conv_inputs",
    "compute_dtype",
    "check_scan_inputs",
]


#: (D, L) of Vivim's selective scans for one 5 x 256 x 256 clip: D = 2 C (expand 2), L = T h w, at the four stages.
VIVIM_STAGE_SCAN_SIZES = ((128, 20480), (256, 5120), (640, 1280), (1024, 320))


def vivim_scan_inputs(dim: int, length: int, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Vivim-like scan operands (N = 16, S4D-real A, softplus step sizes near 0.1-0.3, gate, skip) for tests and
    benchmarks: keyword arguments of :func:`selective_scan` except ``delta_softplus``."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "u": torch.randn(batch, dim, length, generator=generator),
        "delta": torch.randn(batch, dim, length, generator=generator) * 0.5 - 1.0,
        "A": -torch.arange(1.0, 17.0).repeat(dim, 1),
        "B": torch.randn(batch, 16, length, generator=generator),
        "C": torch.randn(batch, 16, length, generator=generator),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=generator),
        "delta_bias": torch.rand(dim, generator=generator) * 0.1,
    }


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 accumulation for half/bfloat16/fp32 inputs; fp64 stays fp64 (gradcheck)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def check_scan_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ``ValueError`` with the offending shape when inputs do not follow mamba-ssm's layout."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, dim, length), got shape {tuple(u.shape)}")
    b, d, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta must match u {tuple(u.shape)}, got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (dim={d}, d_state), got {tuple(A.shape)}")
    n = A.shape[1]
    for name, mat in (("B", B), ("C", C)):
        if mat.dim() == 3:
            ok = mat.shape == (b, n, length)
        elif mat.dim() == 4:
            ok = mat.shape[0] == b and mat.shape[2:] == (n, length) and d % mat.shape[1] == 0
        else:
            ok = False
        if not ok:
            raise ValueError(
                f"selective_scan: {name} must be (batch={b}, d_state={n}, length={length}) or "
                f"(batch, groups dividing {d}, d_state, length), got {tuple(mat.shape)}"
            )
    if D is not None and D.shape != (d,):
        raise ValueError(f"selective_scan: D must be ({d},), got {tuple(D.shape)}")
    if delta_bias is not None and delta_bias.shape != (d,):
        raise ValueError(f"selective_scan: delta_bias must be ({d},), got {tuple(delta_bias.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z must match u {tuple(u.shape)}, got {tuple(z.shape)}")


def as_grouped(mat: torch.Tensor) -> torch.Tensor:
    """B or C as (b, groups, N, L): the ungrouped (b, N, L) layout is one group."""
    return mat.unsqueeze(1) if mat.dim() == 3 else mat


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Operands in the compute dtype, with the step sizes' bias and softplus applied and B, C grouped."""
    dtype = compute_dtype(u, delta, A, B, C)
    u_c, delta_c = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta_c = delta_c + delta_bias.to(dtype)[None, :, None]
    if delta_softplus:
        delta_c = F.softplus(delta_c)
    return u_c, delta_c, A.to(dtype), as_grouped(B).to(dtype), as_grouped(C).to(dtype)


def _finish(y: torch.Tensor, u: torch.Tensor, D, z, out_dtype: torch.dtype) -> torch.Tensor:
    if D is not None:
        y = y + u * D.to(y.dtype)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_sequential(
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
    """Plain sequential selective scan (one Python step per position): the ground truth for tests."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    u_c, delta_c, A_c, B_c, C_c = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, length = u.shape
    g = B_c.shape[1]
    # (b, g, d/g, L) views so that each channel meets its group's B and C
    delta_g = delta_c.view(b, g, d // g, length)
    du_g = (delta_c * u_c).view(b, g, d // g, length)
    A_g = A_c.view(g, d // g, -1)
    state = u_c.new_zeros(b, g, d // g, A_c.shape[1])
    outputs = []
    for t in range(length):
        decay = torch.exp(delta_g[..., t, None] * A_g)
        state = decay * state + du_g[..., t, None] * B_c[:, :, None, :, t]
        outputs.append((state * C_c[:, :, None, :, t]).sum(-1))
    y = torch.stack(outputs, dim=-1).reshape(b, d, length)
    return _finish(y, u_c, D, z, u.dtype)


def default_chunk_size(length: int) -> int:
    """Power of two near sqrt(L): balances vectorised intra-chunk steps against inter-chunk carry steps."""
    if length <= 1:
        return 1
    return int(min(256, max(8, 2 ** round(math.log2(math.sqrt(length))))))


def selective_scan_chunked(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Exact chunked selective scan in PyTorch ops (autograd, any device); see the module docstring."""
    check_scan_inputs(u, delta, A, B, C, D, z, delta_bias)
    u_c, delta_c, A_c, B_c, C_c = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    b, d, length = u.shape
    g, n = B_c.shape[1], A_c.shape[1]
    k = chunk_size or default_chunk_size(length)
    k = max(1, min(k, length))
    num_chunks = -(-length // k)
    pad = num_chunks * k - length

    def chunked(x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        """(..., L) -> (K, ..., num_chunks): position-in-chunk first so each step reads a contiguous slab."""
        if pad:
            x = F.pad(x, (0, pad), value=pad_value)
        x = x.reshape(*x.shape[:-1], num_chunks, k)
        return x.movedim(-1, 0).contiguous()

    # per-step slabs: delta, delta*u (b, g, d/g, nc, 1) and B, C (b, g, 1, nc, n); broadcast to (b, g, d/g, nc, n)
    delta_k = chunked(delta_c.view(b, g, d // g, length)).unsqueeze(-1)
    du_k = chunked((delta_c * u_c).view(b, g, d // g, length)).unsqueeze(-1)
    B_k = chunked(B_c).transpose(-1, -2).unsqueeze(3)
    C_k = chunked(C_c).transpose(-1, -2).unsqueeze(3)
    A_k = A_c.view(g, d // g, 1, n)

    # 1) recurrence inside every chunk at once from a zero state; only (…, nc) outputs are kept per step
    state = None
    y_local = []
    for t in range(k):
        step_input = du_k[t] * B_k[t]
        state = step_input if state is None else torch.exp(delta_k[t] * A_k) * state + step_input
        y_local.append((state * C_k[t]).sum(-1))

    # 2) state entering each chunk; the decay over a chunk is exp(A * sum(delta)) (padding has delta 0)
    cum_delta = delta_k.cumsum(0)
    chunk_decay = torch.exp(cum_delta[-1] * A_k)
    carries = [torch.zeros_like(state[..., 0, :])]
    for c in range(num_chunks - 1):
        carries.append(chunk_decay[..., c, :] * carries[-1] + state[..., c, :])
    carry = torch.stack(carries, dim=-2)

    # 3) add the carried state's contribution C_t * exp(A * cumsum(delta)_t) * carry to every position
    y = torch.stack([y_local[t] + (torch.exp(cum_delta[t] * A_k) * carry * C_k[t]).sum(-1) for t in range(k)])
    y = y.movedim(0, -1).reshape(b, d, num_chunks * k)[..., :length]
    return _finish(y, u_c, D, z, u.dtype)


def check_conv_inputs(x: torch.Tensor, weight: torch.Tensor, activation: str | None) -> torch.Tensor:
    """Validate causal-conv operands; returns the weight as (dim, width) (an nn.Conv1d weight is squeezed)."""
    if x.dim() != 3:
        raise ValueError(f"causal_conv1d: x must be (batch, dim, length), got {tuple(x.shape)}")
    if weight.dim() == 3 and weight.shape[1] == 1:
        weight = weight.squeeze(1)
    if weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"causal_conv1d: weight must be (dim={x.shape[1]}, width), got {tuple(weight.shape)}")
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"causal_conv1d: activation must be None, 'silu' or 'swish', got {activation!r}")
    return weight


def causal_conv1d_torch(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """Causal depthwise conv1d over (batch, dim, length) with weight (dim, width); optional SiLU."""
    weight = check_conv_inputs(x, weight, activation)
    width = weight.shape[1]
    out = F.conv1d(
        x,
        weight.unsqueeze(1).to(x.dtype),
        None if bias is None else bias.to(x.dtype),
        padding=width - 1,
        groups=x.shape[1],
    )[..., : x.shape[-1]]
    return F.silu(out) if activation is not None else out

"""ST-Mamba: the spatio-temporal selective-scan layer of Vivim (Yang et al., arXiv 2401.14168).

A clip's feature map (B, T, h, w, C) is flattened to tokens in (t, h, w) order and mixed by three selective
scans that share the input and output projections but have their own conv / x_proj / dt_proj / A / D:

* forward:  raster order (t, h, w) — frame 1 row by row, then frame 2, ...
* backward: the same sequence reversed;
* temporal: order (h, w, t), so each pixel's T frames are consecutive.

The three outputs are averaged *before* the shared output projection. The layer then applies the
detail-specific FFN (Linear -> 3x3x3 depthwise Conv3d over (t, h, w) -> GELU -> Linear), both pre-norm with
residuals. Each direction's parameters live in ``directions.<raster|reverse|temporal>``; the public code's names
(``conv1d_b``, ``A_b_log``, ``D_s``, ...) are mapped on loading by ``vivim_monai.networks.weights.LEGACY_KEY_RULES``.

Unlike the public code, T comes from the input (no hard-coded 5 frames), every backend computes all three
directions, and Mamba's dt initialisation is kept (the public code re-initialises ``dt_proj`` to zero bias;
``dt_init="vivim"`` reproduces that for parity experiments).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.layers import DropPath

from vivim_monai.ops import ScanOrder, causal_conv1d, selective_scan

__all__ = [
    "DetailSpecificFFN",
    "MambaDirection",
    "STMambaLayer",
    "STMambaStage",
    "TriDirectionalMamba",
    "st_mamba_stages",
]

#: scan direction -> the visiting order of its tokens (the public code's "", "_b", "_s" = spatial-first)
DIRECTIONS = ("raster", "reverse", "temporal")
DT_INITS = ("mamba", "vivim")


def _batched(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Batched matrix product where one side is a shared 2-D weight; bmm reads transposed operands without copies."""
    if left.dim() == 2:
        left = left.expand(right.shape[0], -1, -1)
    else:
        right = right.expand(left.shape[0], -1, -1)
    return torch.bmm(left, right)


class MambaDirection(nn.Module):
    """The parameters of one scan direction: causal depthwise conv, x / dt projections, ``A`` (as log) and ``D``."""

    def __init__(self, d_inner: int, d_state: int, d_conv: int, dt_rank: int) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        a_log = torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1)
        self.A_log = nn.Parameter(a_log)  # S4D-real init: A = -(1..N)
        self.D = nn.Parameter(torch.ones(d_inner))


class TriDirectionalMamba(nn.Module):
    """Mamba mixer over (t, h, w) tokens with forward, backward and temporal-first scans (``bimamba v3``).

    Args:
        dim: token channels C.
        d_state: SSM state size N.
        d_conv: causal conv width.
        expand: inner width factor (d_inner = expand * C).
        dt_rank: rank of the delta projection; default ceil(C / 16).
        dt_min, dt_max, dt_init_floor: range of the initial step sizes (Mamba's log-uniform init).
        dt_init: ``"mamba"`` (Mamba's init, default) or ``"vivim"`` (trunc-normal weight, zero bias, as the
            public Vivim code ends up with after its blanket Linear re-initialisation).
        scan_backend: selective-scan backend (None = automatic / ``VIVIM_SCAN_BACKEND``).
    """

    def __init__(
        self,
        dim: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        dt_init: str = "mamba",
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if dt_init not in DT_INITS:
            raise ValueError(f"dt_init must be one of {DT_INITS}, got {dt_init!r}")
        if not 0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        self.dim, self.d_state, self.d_conv = dim, d_state, d_conv
        self.d_inner = expand * dim
        self.dt_rank = dt_rank or math.ceil(dim / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * self.d_inner, bias=False)
        self.directions = nn.ModuleDict(
            {name: MambaDirection(self.d_inner, d_state, d_conv, self.dt_rank) for name in DIRECTIONS}
        )
        self.out_proj = nn.Linear(self.d_inner, dim, bias=False)
        self._init_weights(dt_init, dt_min, dt_max, dt_init_floor)

    def _init_weights(self, dt_init: str, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        for linear in [self.in_proj, self.out_proj] + [d.x_proj for d in self.directions.values()]:
            nn.init.trunc_normal_(linear.weight, std=0.02)
        for direction in self.directions.values():
            dt_proj = direction.dt_proj
            with torch.no_grad():
                if dt_init == "vivim":
                    nn.init.trunc_normal_(dt_proj.weight, std=0.02)
                    dt_proj.bias.zero_()
                    continue
                bound = self.dt_rank**-0.5
                nn.init.uniform_(dt_proj.weight, -bound, bound)
                log_dt = torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
                dt = torch.exp(log_dt).clamp(min=dt_init_floor)
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(bias) == dt

    def _scan(self, x: torch.Tensor, z: torch.Tensor, direction: MambaDirection, order: ScanOrder) -> torch.Tensor:
        """One direction over (B, d_inner, L) operands in memory order, visiting the tokens in ``order``.

        Causal conv + SiLU, x_proj -> (dt, B, C), selective scan with D skip and SiLU(z) gate; the backends read the
        operands in scan order (the compiled CPU kernel without copies) and return the output in memory order.
        """
        conv, x_proj, dt_proj = direction.conv1d, direction.x_proj, direction.dt_proj
        x = causal_conv1d(x, conv.weight, conv.bias, activation="silu", backend=self.scan_backend, scan_order=order)
        x_dbl = _batched(x.transpose(1, 2), x_proj.weight.t())  # (B, L, dt_rank + 2N)
        dt, b_mat, c_mat = x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = _batched(dt_proj.weight, dt.transpose(1, 2))  # (B, d_inner, L), bias added in the scan
        return selective_scan(
            x,
            delta,
            -torch.exp(direction.A_log.float()),
            b_mat.transpose(1, 2),
            c_mat.transpose(1, 2),
            direction.D.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
            scan_order=order,
        )

    def forward(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        """x: (B, L = T*h*w, C) in (t, h, w) order -> (B, L, C)."""
        length = x.shape[1]
        if length != num_frames * height * width:
            raise ValueError(f"token count {length} != T*h*w = {num_frames}*{height}*{width}")
        xz = _batched(self.in_proj.weight, x.transpose(1, 2))  # (B, 2*d_inner, L), channel-major
        x_in, z = xz.chunk(2, dim=1)
        y = self._scan(x_in, z, self.directions["raster"], ScanOrder("forward"))
        y = y + self._scan(x_in, z, self.directions["reverse"], ScanOrder("reverse"))
        y = y + self._scan(x_in, z, self.directions["temporal"], ScanOrder("temporal", num_frames))
        return _batched(y.transpose(1, 2), self.out_proj.weight.t() / 3.0)  # mean of the directions, projected


class DetailSpecificFFN(nn.Module):
    """DSF: Linear (C->rC) -> 3x3x3 depthwise Conv3d over (t, h, w) -> GELU -> Linear (rC->C)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv3d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim, bias=True)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        batch, length, _ = x.shape
        # tokens (B, T*h*w, C') are a channels-last 3-D map: convolve it in place of a transposed copy
        x = self.fc1(x).view(batch, num_frames, height, width, -1).permute(0, 4, 1, 2, 3)
        x = self.dwconv(x).permute(0, 2, 3, 4, 1).reshape(batch, length, -1)
        return self.fc2(F.gelu(x))


class STMambaLayer(nn.Module):
    """Vivim's ``MambaLayer``: x + DropPath(ST-Mamba(LN(x))), then x + DropPath(DSF(LN(x)))."""

    def __init__(
        self,
        dim: int,
        mlp_ratio: int = 4,
        drop_path: float = 0.0,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_init: str = "mamba",
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.mamba = TriDirectionalMamba(
            dim, d_state=d_state, d_conv=d_conv, expand=expand, dt_init=dt_init, scan_backend=scan_backend
        )
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = DetailSpecificFFN(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        nn.init.trunc_normal_(self.mlp.fc1.weight, std=0.02)
        nn.init.trunc_normal_(self.mlp.fc2.weight, std=0.02)
        nn.init.zeros_(self.mlp.fc1.bias)
        nn.init.zeros_(self.mlp.fc2.bias)

    @torch.no_grad()
    def zero_residuals_(self) -> None:
        """Zero both residual branches' output projections: the layer becomes the identity and still learns (the
        projections get gradients; everything before them does from the first step that moves them)."""
        nn.init.zeros_(self.mamba.out_proj.weight)
        nn.init.zeros_(self.mlp.fc2.weight)
        nn.init.zeros_(self.mlp.fc2.bias)

    def forward(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        """x: (B, T*h*w, C) tokens in (t, h, w) order."""
        x = x + self.drop_path(self.mamba(self.norm1(x), num_frames, height, width))
        return x + self.drop_path(self.mlp(self.norm2(x), num_frames, height, width))


class STMambaStage(nn.ModuleList):
    """The ST-Mamba layers of one encoder stage, applied to its frame-folded maps ``(B*T, C, h, w)``.

    Each clip's maps become ``T*h*w`` tokens in (t, h, w) order, pass through the layers and are folded back; with no
    layers the maps pass unchanged. A ``ModuleList``, so its layers' state-dict keys are ``<stage>.<layer>.*``.
    """

    def forward(self, maps: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        if not len(self):
            return maps
        frames, channels, height, width = maps.shape
        if frames % num_frames:
            raise ValueError(f"{frames} frame maps do not split into clips of {num_frames} frames")
        tokens = maps.permute(0, 2, 3, 1).reshape(frames // num_frames, num_frames * height * width, channels)
        for layer in self:
            tokens = layer(tokens, num_frames, height, width)
        return tokens.reshape(frames, height, width, channels).permute(0, 3, 1, 2).contiguous()


def st_mamba_stages(
    widths: Sequence[int], depths: Sequence[int], drop_path_rate: float = 0.0, **layer_options: Any
) -> nn.ModuleList:
    """One :class:`STMambaStage` per stage, ``depths[i]`` layers of width ``widths[i]``; stochastic depth linear from 0
    to ``drop_path_rate`` over all layers of all stages. ``layer_options`` go to every :class:`STMambaLayer`."""
    rates = torch.linspace(0, drop_path_rate, max(sum(depths), 1)).tolist()
    stages, start = nn.ModuleList(), 0
    for width, count in zip(widths, depths):
        stages.append(
            STMambaStage(STMambaLayer(width, drop_path=rates[start + j], **layer_options) for j in range(count))
        )
        start += count
    return stages

"""MediViSTA's adapters for a frozen image encoder (Kim et al., arXiv 2309.13539, IEEE JBHI 2025).

- :class:`TemporalFusionAttention`: windowed attention in which frame ``t``'s queries meet keys and values fused
  over the clip, ``k_hat_t = sum_tau phi(t - tau) k_tau`` with ``phi(d) = exp(-|d| / lambda)`` (lambda = 3 in the
  authors' code); the weights of each frame are normalised to sum to 1 so the fused keys keep one frame's scale at
  any clip length ``T``.
- :class:`FrequencyFusion`: the high-frequency Haar sub-bands of each frame through a small CNN, whose features
  enter the image features by windowed cross-attention (the paper's frequency feature fusion).

Both add their output through a zero-initialised projection, so untrained adapters leave the features unchanged.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vivim_monai.networks.blocks.tiny_vit import window_merge, window_partition

__all__ = ["FrequencyFusion", "TemporalFusionAttention", "haar_subbands", "temporal_kernel", "windowed_attention"]


def temporal_kernel(frames: int, decay: float, device=None, dtype=None) -> torch.Tensor:
    """``(T, T)`` weights ``exp(-|t - tau| / decay)``, each row normalised to sum 1."""
    steps = torch.arange(frames, device=device, dtype=dtype or torch.float32)
    weights = torch.exp(-(steps[:, None] - steps[None]).abs() / decay)
    return weights / weights.sum(dim=1, keepdim=True)


def windowed_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, window: int, heads: int
) -> torch.Tensor:
    """Multi-head attention inside ``window x window`` windows of ``(N, H, W, C)`` maps (zero-padded bottom/right)."""
    size = tuple(query.shape[1:3])
    parts = []
    for tensor in (query, key, value):
        windows, padded = window_partition(tensor, window)
        parts.append(windows.view(windows.shape[0], windows.shape[1], heads, -1).transpose(1, 2))
    out = F.scaled_dot_product_attention(*parts).transpose(1, 2).flatten(2)
    return window_merge(out, window, padded, size)


class _ZeroInitWindowAttention(nn.Module):
    """Pre-norm query from ``dim``-wide features, keys/values from ``context``-wide ones, windowed multi-head
    attention, and a zero-initialised output projection back to ``dim`` (an untrained adapter adds nothing)."""

    def __init__(self, dim: int, context: int, hidden: int, heads: int, window: int):
        super().__init__()
        self.window, self.heads = window, heads
        self.norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, hidden)
        self.key_value = nn.Linear(context, 2 * hidden)
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)


class TemporalFusionAttention(_ZeroInitWindowAttention):
    """Residual temporal-fusion attention on a clip of feature maps ``(B, T, C, H, W)`` (any ``T``)."""

    def __init__(self, dim: int, hidden: int = 64, heads: int = 4, window: int = 8, decay: float = 3.0):
        super().__init__(dim, dim, hidden, heads, window)
        self.decay = decay

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        batch, frames, channels, height, width = clip.shape
        tokens = self.norm(clip.permute(0, 1, 3, 4, 2))
        query = self.query(tokens)
        key, value = self.key_value(tokens).chunk(2, dim=-1)
        kernel = temporal_kernel(frames, self.decay, clip.device, key.dtype)
        key = torch.einsum("st,bthwc->bshwc", kernel, key)
        value = torch.einsum("st,bthwc->bshwc", kernel, value)
        flat = [t.reshape(batch * frames, height, width, -1) for t in (query, key, value)]
        fused = self.out(windowed_attention(*flat, self.window, self.heads))
        return clip + fused.view(batch, frames, height, width, channels).permute(0, 1, 4, 2, 3)


def haar_subbands(image: torch.Tensor) -> torch.Tensor:
    """One level of the orthonormal 2-D Haar transform of ``(N, 1, H, W)`` (even H, W) -> ``(N, 4, H/2, W/2)``:
    the approximation and the vertical-, horizontal- and diagonal-difference details."""
    a, b = image[..., 0::2, 0::2], image[..., 0::2, 1::2]
    c, d = image[..., 1::2, 0::2], image[..., 1::2, 1::2]
    return torch.cat([a + b + c + d, a + b - c - d, a - b + c - d, a - b - c + d], dim=1) / 2


class FrequencyFusion(_ZeroInitWindowAttention):
    """Residual cross-attention from image features ``(N, C, S, S)`` to CNN features of the frames' Haar details.

    ``frames`` are the encoder's ``(N, 3, R, R)`` inputs; the CNN halves the Haar resolution ``R / 2`` to meet the
    features' grid (other grid sizes are matched by interpolation).
    """

    def __init__(self, dim: int = 256, channels: int = 32, hidden: int = 64, heads: int = 4, window: int = 8):
        super().__init__(dim, hidden, hidden, heads, window)
        self.cnn = nn.Sequential(
            nn.Conv2d(3, channels, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * channels, hidden, 1),
        )

    def forward(self, features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        details = haar_subbands(frames.mean(dim=1, keepdim=True))[:, 1:]
        context = self.cnn(details)
        if context.shape[-2:] != features.shape[-2:]:
            context = F.interpolate(context, size=features.shape[-2:], mode="bilinear", align_corners=False)
        query = self.query(self.norm(features.permute(0, 2, 3, 1)))
        key, value = self.key_value(context.permute(0, 2, 3, 1)).chunk(2, dim=-1)
        fused = self.out(windowed_attention(query, key, value, self.window, self.heads))
        return features + fused.permute(0, 3, 1, 2)

"""SegFormer all-MLP decoder (Xie et al., NeurIPS 2021), applied frame by frame.

Each stage's map goes through a per-pixel Linear to ``decoder_dim``, is resized bilinearly to the stride-4 grid,
the four maps are concatenated in reverse order (deepest first), fused by a 1x1 conv, BatchNorm, ReLU and dropout.
Names (``linear_c.i.proj``, ``linear_fuse``, ``batch_norm``) follow the Hugging Face ``SegformerDecodeHead``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SegFormerHead"]


class _Projection(nn.Module):
    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return self.proj(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, -1, h, w)


class SegFormerHead(nn.Module):
    """All-MLP decoder over the four stage maps; returns (N, decoder_dim, H/4, W/4) fused features.

    Args:
        in_dims: channels of the four stage maps.
        decoder_dim: width of the decoder (768 for B2-B5, 256 for B0/B1).
        dropout: dropout after the fuse block (SegFormer's classifier dropout, 0.1).
        feature_dropout: dropout on each resized stage map during training (the ovarian fork uses 0.15).
    """

    def __init__(self, in_dims: Sequence[int], decoder_dim: int, dropout: float = 0.1, feature_dropout: float = 0.0):
        super().__init__()
        self.linear_c = nn.ModuleList([_Projection(c, decoder_dim) for c in in_dims])
        self.linear_fuse = nn.Conv2d(decoder_dim * len(in_dims), decoder_dim, kernel_size=1, bias=False)
        self.batch_norm = nn.BatchNorm2d(decoder_dim)
        self.dropout = nn.Dropout(dropout)
        self.feature_dropout = nn.Dropout(feature_dropout)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        maps = [
            self.feature_dropout(F.interpolate(mlp(f), size=size, mode="bilinear", align_corners=False))
            for f, mlp in zip(features, self.linear_c)
        ]
        fused = self.linear_fuse(torch.cat(maps[::-1], dim=1))
        return self.dropout(F.relu(self.batch_norm(fused)))

"""TinyViT image encoder in LiteMedSAM's configuration, with parameter names of the LiteMedSAM checkpoint.

TinyViT (Wu et al., ECCV 2022, arXiv 2207.10666) as distilled into SAM by MobileSAM (Zhang et al., arXiv 2306.14289)
and fine-tuned on 1.57 M medical image-mask pairs by LiteMedSAM (Ma et al., MedSAM, Nat. Commun. 2024, the
``LiteMedSAM`` branch of bowang-lab/MedSAM). LiteMedSAM's variant differs from MobileSAM's: the patch embedding is
two 1x1 convolutions (no stride), so a 256 x 256 image keeps 256 x 256 tokens in the convolutional stage, and the last
patch merging does not downsample, so the 256-channel neck output is 64 x 64 (1/4 of the input).

Stages: MBConv x2 at width 64; then windowed-attention blocks (attention with a learned bias per head and per
``(|dy|, |dx|)`` offset inside the window, a 3x3 depthwise "local" convolution, an MLP) at widths 128/160/320, depths
2/6/2, heads 4/5/10, windows 7/14/7. Feature maps stay ``(B, C, H, W)`` between stages; tokens exist only inside
the attention blocks.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["ConvBN", "LayerNorm2d", "TinyViT", "TinyViTBlock", "WindowAttention"]


class ConvBN(nn.Sequential):
    """Convolution without bias followed by batch norm (children ``c`` and ``bn``, as in the checkpoint)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1, groups: int = 1):
        super().__init__()
        self.c = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)


class LayerNorm2d(nn.Module):
    """Layer norm over the channels of a ``(B, C, H, W)`` map (SAM's neck and mask decoder use eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.movedim(1, -1), x.shape[1:2], self.weight, self.bias, self.eps).movedim(-1, 1)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, then GELU."""

    def __init__(self, channels: int, expansion: float = 4.0):
        super().__init__()
        hidden = int(channels * expansion)
        self.conv1 = ConvBN(channels, hidden)
        self.conv2 = ConvBN(hidden, hidden, 3, groups=hidden)
        self.conv3 = ConvBN(hidden, channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv3(self.act(self.conv2(self.act(self.conv1(x))))))


class PatchMerging(nn.Module):
    """1x1 conv to the next width, 3x3 depthwise conv with ``stride``, 1x1 conv; GELU after the first two."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = ConvBN(in_channels, out_channels)
        self.conv2 = ConvBN(out_channels, out_channels, 3, stride, groups=out_channels)
        self.conv3 = ConvBN(out_channels, out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.act(self.conv2(self.act(self.conv1(x)))))


class WindowAttention(nn.Module):
    """Multi-head self-attention over the tokens of one window, pre-normalised, with TinyViT's relative bias.

    ``qkv`` is laid out head by head (``[q_h, k_h, v_h]`` for each head ``h``), as in the checkpoint. The bias of a
    query-key pair is ``attention_biases[head, |dy| * window + |dx|]``.
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        rows, cols = rows.flatten(), cols.flatten()
        offsets = (rows[:, None] - rows[None]).abs() * window + (cols[:, None] - cols[None]).abs()
        self.register_buffer("bias_index", offsets, persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        qkv = self.qkv(self.norm(tokens)).view(batch, length, self.num_heads, 3, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 1, 4)  # each (batch, heads, length, head_dim)
        bias = self.attention_biases[:, self.bias_index].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(batch, length, -1))


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W, C)`` -> ``(B * nH * nW, window**2, C)`` after zero-padding bottom/right; also the padded size."""
    batch, height, width, channels = x.shape
    pad_h, pad_w = (-height) % window, (-width) % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    x = x.view(batch, rows, window, cols, window, channels).transpose(2, 3)
    return x.reshape(batch * rows * cols, window * window, channels), (height + pad_h, width + pad_w)


def window_merge(windows: torch.Tensor, window: int, padded: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nH * nW, window**2, C)`` -> ``(B, H, W, C)`` cropped to ``size``."""
    rows, cols = padded[0] // window, padded[1] // window
    channels = windows.shape[-1]
    x = windows.view(-1, rows, cols, window, window, channels).transpose(2, 3)
    return x.reshape(-1, padded[0], padded[1], channels)[:, : size[0], : size[1]]


class TinyViTBlock(nn.Module):
    """Windowed attention (residual), 3x3 depthwise local conv, MLP (residual), on ``(B, C, H, W)`` maps."""

    def __init__(self, dim: int, num_heads: int, window: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = ConvBN(dim, dim, 3, groups=dim)
        self.mlp = nn.Module()
        self.mlp.norm = nn.LayerNorm(dim)
        self.mlp.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The attention branch alone, ``(B, C, H, W)`` -> ``(B, C, H, W)`` (what the residual adds)."""
        tokens = x.permute(0, 2, 3, 1)
        windows, padded = window_partition(tokens, self.window)
        return window_merge(self.attn(windows), self.window, padded, tokens.shape[1:3]).permute(0, 3, 1, 2)

    def feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.permute(0, 2, 3, 1)
        tokens = tokens + self.mlp.fc2(F.gelu(self.mlp.fc1(self.mlp.norm(tokens))))
        return tokens.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.local_conv(x + self.attention(x)))


class TinyViTStage(nn.Module):
    """``blocks`` then an optional ``downsample`` (patch merging to the next stage's width)."""

    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, after_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
        for index, block in enumerate(self.blocks):
            x = block(x)
            if after_block is not None:
                x = after_block(index, x)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """LiteMedSAM's image encoder: ``(N, 3, 256, 256)`` in [0, 1] -> ``(N, 256, 64, 64)`` image embedding.

    Any size works (windows are padded), but the weights were trained at 256 x 256 only.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        windows: Sequence[int] = (7, 7, 14, 7),
        out_channels: int = 256,
    ):
        super().__init__()
        self.widths, self.windows = tuple(widths), tuple(windows)
        self.patch_embed = nn.Module()
        self.patch_embed.seq = nn.Sequential(ConvBN(3, widths[0] // 2), nn.GELU(), ConvBN(widths[0] // 2, widths[0]))
        stages = []
        for index, (width, depth) in enumerate(zip(widths, depths)):
            if index == 0:
                blocks: list[nn.Module] = [MBConv(width) for _ in range(depth)]
            else:
                blocks = [TinyViTBlock(width, num_heads[index], windows[index]) for _ in range(depth)]
            downsample = None
            if index + 1 < len(widths):
                # LiteMedSAM keeps the resolution at the last merge (into the widest stage)
                stride = 1 if index + 2 == len(widths) else 2
                downsample = PatchMerging(width, widths[index + 1], stride)
            stages.append(TinyViTStage(blocks, downsample))
        self.layers = nn.ModuleList(stages)
        self.neck = nn.Sequential(
            nn.Conv2d(widths[-1], out_channels, 1, bias=False),
            LayerNorm2d(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            LayerNorm2d(out_channels),
        )

    def forward(
        self, x: torch.Tensor, after_block: Callable[[int, int, torch.Tensor], torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``after_block(stage, block, x)``, when given, may change the map after every block (adapters)."""
        x = self.patch_embed.seq(x)
        for stage_index, stage in enumerate(self.layers):
            hook = None if after_block is None else (lambda b, y, s=stage_index: after_block(s, b, y))
            x = stage(x, hook)
        return self.neck(x)

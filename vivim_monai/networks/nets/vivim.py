"""Vivim: Video Vision Mamba for medical video segmentation.

Yang et al., "Vivim: a Video Vision Mamba for Medical Video Segmentation", arXiv 2401.14168 (TCSVT 2025).
Architecture as documented in the project reference (``docs`` of the shared reference material):

* a hierarchical MiT (SegFormer) encoder run per frame: overlapping patch embeddings (7/4, then 3/2),
  efficient self-attention with spatial reduction and Mix-FFN blocks; the stage-final LayerNorm is skipped,
  as in Vivim;
* after every stage, ``mamba_depths[i]`` ST-Mamba layers, the only modules that see time; their output is both
  the stage output and the next stage's input;
* the SegFormer all-MLP decoder, a 1x1 classifier and x4 bilinear upsampling, predicting every frame.

MONAI layout: input ``(B, C, H, W, T)``, output logits ``(B, K, H, W, T)``, any ``T >= 1``, ``H`` and ``W``
multiples of 32. Nothing is downloaded: weights start random or come from a local file (``weights=``).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from vivim_monai.networks.blocks import MiTBlock, OverlapPatchEmbed, SegFormerHead, STMambaLayer

__all__ = ["VIVIM_VARIANTS", "Vivim", "remap_state_dict"]

_MIT_WIDE = {"embed_dims": (64, 128, 320, 512), "num_heads": (1, 2, 5, 8), "sr_ratios": (8, 4, 2, 1)}
#: Named configurations. b0-b3 are the MiT encoders of SegFormer (b3 is the Vivim paper's); ``tiny`` is a
#: CPU-friendly variant for tests and quick experiments.
VIVIM_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": {
        "embed_dims": (16, 32, 64, 128),
        "num_heads": (1, 1, 2, 4),
        "sr_ratios": (8, 4, 2, 1),
        "depths": (1, 1, 1, 1),
        "mamba_depths": (1, 1, 1, 1),
        "decoder_dim": 64,
    },
    "b0": {
        "embed_dims": (32, 64, 160, 256),
        "num_heads": (1, 2, 5, 8),
        "sr_ratios": (8, 4, 2, 1),
        "depths": (2, 2, 2, 2),
        "mamba_depths": (2, 2, 2, 2),
        "decoder_dim": 256,
    },
    "b1": {**_MIT_WIDE, "depths": (2, 2, 2, 2), "mamba_depths": (2, 2, 2, 2), "decoder_dim": 256},
    "b2": {**_MIT_WIDE, "depths": (3, 4, 6, 3), "mamba_depths": (2, 2, 2, 2), "decoder_dim": 768},
    "b3": {**_MIT_WIDE, "depths": (3, 4, 18, 3), "mamba_depths": (2, 2, 2, 2), "decoder_dim": 768},
}
_PATCH_GEOMETRY = ((7, 4), (3, 2), (3, 2), (3, 2))  # (kernel, stride) per stage
SPATIAL_MULTIPLE = 32


def _rate(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def _four(name: str, value: Sequence[int]) -> tuple[int, ...]:
    values = tuple(int(v) for v in value)
    if len(values) != 4:
        raise ValueError(f"{name} needs one value per stage (4), got {list(value)}")
    return values


class _MiTEncoder(nn.Module):
    """The per-frame SegFormer encoder (patch embeddings and transformer blocks; no stage-final norms)."""

    def __init__(self, in_channels, embed_dims, depths, num_heads, sr_ratios, mlp_ratio, drop_path_rate):
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.patch_embeddings = nn.ModuleList()
        self.block = nn.ModuleList()
        start, channels = 0, in_channels
        for i, ((kernel, stride), dim) in enumerate(zip(_PATCH_GEOMETRY, embed_dims)):
            self.patch_embeddings.append(OverlapPatchEmbed(channels, dim, kernel, stride))
            self.block.append(
                nn.ModuleList(
                    MiTBlock(dim, num_heads[i], sr_ratios[i], mlp_ratio, drop_path=rates[start + j])
                    for j in range(depths[i])
                )
            )
            start, channels = start + depths[i], dim


class _VivimEncoder(nn.Module):
    def __init__(self, downsample_layers: _MiTEncoder, stages: nn.ModuleList) -> None:
        super().__init__()
        self.downsample_layers = downsample_layers
        self.stages = stages

    def forward(self, frames: torch.Tensor, num_frames: int) -> list[torch.Tensor]:
        """frames (B*T, C, H, W), grouped by clip -> four maps (B*T, C_i, H/2^(i+2), W/2^(i+2))."""
        features, x = [], frames
        batch = frames.shape[0] // num_frames
        for embed, blocks, temporal in zip(
            self.downsample_layers.patch_embeddings, self.downsample_layers.block, self.stages
        ):
            tokens, h, w = embed(x)
            for block in blocks:
                tokens = block(tokens, h, w)
            if len(temporal):
                tokens = tokens.reshape(batch, num_frames * h * w, -1)  # (t, h, w) token order per clip
                for layer in temporal:
                    tokens = layer(tokens, num_frames, h, w)
            x = tokens.reshape(batch * num_frames, h, w, -1).permute(0, 3, 1, 2).contiguous()
            features.append(x)
        return features


class Vivim(nn.Module):
    """Vivim video segmentation network, ``(B, C, H, W, T) -> (B, K, H, W, T)`` logits.

    Args:
        variant: ``"tiny"``, ``"b0"``, ``"b1"``, ``"b2"`` or ``"b3"`` (the paper's); explicit arguments below
            override the variant's values.
        in_channels: image channels (1 for greyscale ultrasound, 3 for RGB).
        out_channels: classes K (1 for sigmoid binary segmentation, >=2 for softmax multiclass).
        embed_dims, depths, num_heads, sr_ratios: per-stage MiT widths, block counts, heads, reduction ratios.
        mamba_depths: ST-Mamba layers after each stage (2 in Vivim; all zeros gives the spatial-only ablation).
        decoder_dim: all-MLP decoder width.
        mlp_ratio: hidden width factor of the Mix-FFN and detail-specific FFN.
        drop_path_rate: stochastic depth of the MiT blocks, linear over all blocks (SegFormer: 0.1).
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
        weights: optional path of a local checkpoint (this class, the public Vivim code or a SegFormer
            checkpoint; see :meth:`load_weights`). Never downloaded.
    """

    def __init__(
        self,
        variant: str = "b3",
        in_channels: int = 3,
        out_channels: int = 1,
        embed_dims: Sequence[int] | None = None,
        depths: Sequence[int] | None = None,
        num_heads: Sequence[int] | None = None,
        sr_ratios: Sequence[int] | None = None,
        mamba_depths: Sequence[int] | None = None,
        decoder_dim: int | None = None,
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.1,
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
        if variant not in VIVIM_VARIANTS:
            raise ValueError(f"unknown Vivim variant {variant!r}; choose one of {sorted(VIVIM_VARIANTS)}")
        if int(in_channels) < 1 or int(out_channels) < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels} and {out_channels}")
        base = VIVIM_VARIANTS[variant]
        dims = _four("embed_dims", embed_dims or base["embed_dims"])
        depths_ = _four("depths", depths or base["depths"])
        heads = _four("num_heads", num_heads or base["num_heads"])
        srs = _four("sr_ratios", sr_ratios or base["sr_ratios"])
        mamba_depths_ = _four("mamba_depths", base["mamba_depths"] if mamba_depths is None else mamba_depths)
        dec_dim = int(decoder_dim or base["decoder_dim"])
        for name, vals in (("embed_dims", dims), ("num_heads", heads), ("sr_ratios", srs)):
            if min(vals) < 1:
                raise ValueError(f"{name} must be positive, got {list(vals)}")
        if min(depths_) < 0 or min(mamba_depths_) < 0 or dec_dim < 1 or mlp_ratio < 1:
            raise ValueError("depths, mamba_depths must be >= 0 and decoder_dim, mlp_ratio >= 1")
        for dim, head in zip(dims, heads):
            if dim % head:
                raise ValueError(f"embed_dims {list(dims)} must be divisible by num_heads {list(heads)}")
        self.variant, self.in_channels, self.out_channels = variant, int(in_channels), int(out_channels)
        self.embed_dims, self.mamba_depths = dims, mamba_depths_

        mamba_rates = torch.linspace(0, _rate("mamba_drop_path_rate", mamba_drop_path_rate), sum(mamba_depths_) or 1)
        mamba_rates, start, stages = mamba_rates.tolist(), 0, nn.ModuleList()
        for dim, count in zip(dims, mamba_depths_):
            stages.append(
                nn.ModuleList(
                    STMambaLayer(dim, mlp_ratio, mamba_rates[start + j], d_state, d_conv, expand, dt_init, scan_backend)
                    for j in range(count)
                )
            )
            start += count
        mit = _MiTEncoder(
            self.in_channels, dims, depths_, heads, srs, mlp_ratio, _rate("drop_path_rate", drop_path_rate)
        )
        self.encoder = _VivimEncoder(mit, stages)
        self.decoder = SegFormerHead(
            dims, dec_dim, _rate("decoder_dropout", decoder_dropout), _rate("feature_dropout", feature_dropout)
        )
        self.head_dropout = nn.Dropout2d(_rate("head_dropout2d", head_dropout2d))
        self.out = nn.Conv2d(dec_dim, self.out_channels, kernel_size=1)
        self.edgeocr_cls_head = nn.Conv2d(dims[0], 1, kernel_size=1) if edge_head else None
        self._init_spatial_weights()
        if weights is not None:
            self.load_weights(weights)

    def _init_spatial_weights(self) -> None:
        """SegFormer's init for the encoder/decoder/heads (the Mamba layers initialise themselves)."""
        for module in [self.encoder.downsample_layers, self.decoder, self.out, self.edgeocr_cls_head]:
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
        if return_edge and self.edgeocr_cls_head is None:
            raise ValueError("return_edge=True needs a network built with edge_head=True")
        batch, _, height, width, frames = x.shape
        clip = x.permute(0, 4, 1, 2, 3).reshape(batch * frames, self.in_channels, height, width)
        features = self.encoder(clip, frames)
        logits = self.out(self.head_dropout(self.decoder(features)))
        seg = self._to_clip(logits, batch, frames, (height, width))
        if not return_edge:
            return seg
        edge = self._to_clip(self.edgeocr_cls_head(features[0]), batch, frames, (height, width))
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
        path = os.fspath(path)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch.load raises pickle, zip, OS and runtime errors for bad files
            raise ValueError(f"{path}: cannot read checkpoint ({type(err).__name__}: {err})") from err
        state = checkpoint
        for key in ("model", "state_dict"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
        if not isinstance(state, Mapping):
            raise ValueError(f"{path}: not a state dict (found {type(state).__name__})")
        is_segformer = any(k.startswith(("segformer.", "decode_head.")) for k in state)
        state = remap_state_dict(state)
        own = self.state_dict()
        unexpected = sorted(set(state) - set(own))
        wrong_shape = [k for k in state if k in own and own[k].shape != state[k].shape]
        missing = sorted(set(own) - set(state))
        if is_segformer:  # a SegFormer checkpoint has no temporal layers and another classifier
            missing = [k for k in missing if not re.match(r"encoder\.stages\.|out\.|edgeocr_cls_head\.", k)]
        if not strict:
            missing, unexpected = [], []
        if wrong_shape or unexpected or missing:
            found, expected = _architecture(state), _architecture(own)
            differences = [
                f"{name} {found[name]} in the file vs {expected[name]} here"
                for name in expected
                if found.get(name) not in (None, expected[name])
            ]
            detail = (
                f"{len(wrong_shape)} tensors of another shape, {len(unexpected)} unexpected and "
                f"{len(missing)} missing keys (e.g. {(wrong_shape + unexpected + missing)[:3]})"
            )
            raise ValueError(
                f"{path}: checkpoint does not fit Vivim(variant={self.variant!r}, in_channels={self.in_channels}, "
                f"out_channels={self.out_channels}): " + "; ".join(differences + [detail])
            )
        self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


_KEY_RULES = (
    (re.compile(r"^model\."), ""),  # Lightning prefix of the public training code
    (re.compile(r"^segformer\.encoder\."), "encoder.downsample_layers."),  # Hugging Face SegFormer
    (re.compile(r"^decode_head\."), "decoder."),
    (re.compile(r"^(encoder\.stages\.\d+\.\d+)\.0\."), r"\1."),  # nested Sequential of the public Vivim code
)
_DROPPED = re.compile(r"^(decoder\.classifier\.|encoder\.downsample_layers\.layer_norm\.)")  # never used by Vivim


def _architecture(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """What a state dict says about the network: channels, classes, stage widths and block counts."""

    def count(prefix: str, stage: int) -> int:
        pattern = re.compile(rf"^{prefix}\.{stage}\.(\d+)\.")
        return len({m.group(1) for k in state if (m := pattern.match(k))})

    info: dict[str, Any] = {}
    if "out.weight" in state:
        info["output classes"] = int(state["out.weight"].shape[0])
    embed = "encoder.downsample_layers.patch_embeddings.{}.proj.weight"
    if embed.format(0) in state:
        info["input channels"] = int(state[embed.format(0)].shape[1])
        info["stage widths"] = [int(state[embed.format(i)].shape[0]) for i in range(4) if embed.format(i) in state]
    info["MiT blocks per stage"] = [count(r"encoder\.downsample_layers\.block", i) for i in range(4)]
    info["ST-Mamba layers per stage"] = [count(r"encoder\.stages", i) for i in range(4)]
    return info


def remap_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename public-Vivim / SegFormer checkpoint keys to this implementation's; drops modules Vivim never calls."""
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _KEY_RULES:
            key = pattern.sub(replacement, key)
        if not _DROPPED.match(key):
            renamed[key] = value
    return renamed

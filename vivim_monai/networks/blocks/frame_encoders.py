"""Frame encoders of Vivim: four feature maps per frame at strides 4, 8, 16 and 32, with a hook after each stage.

Vivim runs its temporal (ST-Mamba) layers after every encoder stage. An encoder here is called as
``encoder(frames, after_stage)`` on ``(N, C, H, W)`` frames and returns four maps ``(N, C_i, H/2^(i+2), W/2^(i+2))``;
``after_stage(i, map)`` is applied to stage ``i``'s output. Where the encoder is built of stages (MiT, MONAI's
EfficientNet family incl. EfficientNet-Lite) the hook's result feeds the next stage, as in Vivim; a black-box MONAI
``BaseEncoder`` (e.g. a ``resnet*`` backbone with user-supplied weights) is run whole and the hook is applied to its
last four outputs.

* :class:`MiTEncoder`: the SegFormer Mix Transformer (Xie et al., NeurIPS 2021), the paper's encoder;
* :class:`BackboneEncoder`: any ``FlexibleUNet`` backbone of MONAI's registry (``efficientnet-b*``,
  ``efficientnet-lite*`` registered by this package, ``resnet*``), built by :func:`build_backbone`.
"""

from __future__ import annotations

import os
import re
from typing import Callable, Sequence

import torch
import torch.nn as nn
from monai.networks.nets.efficientnet import EfficientNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from vivim_monai.networks.blocks.mit import MiTBlock, OverlapPatchEmbed
from vivim_monai.networks.weights import PACKAGED_WEIGHTS, checkpoint_state, load_state, read_checkpoint

__all__ = [
    "HEAD_KEYS",
    "BackboneEncoder",
    "MiTEncoder",
    "StageHook",
    "backbone_names",
    "build_backbone",
    "regroup_efficientnet_keys",
]

#: ``after_stage(stage_index, feature_map) -> feature_map``
StageHook = Callable[[int, torch.Tensor], torch.Tensor]
_PATCH_GEOMETRY = ((7, 4), (3, 2), (3, 2), (3, 2))  # (kernel, stride) per MiT stage
#: Classifier-head keys of an EfficientNet state dict (absent from the encoders).
HEAD_KEYS = re.compile(r"^_(conv_head|bn1|fc)\.")


class MiTEncoder(nn.Module):
    """The per-frame SegFormer encoder (overlapping patch embeddings and transformer blocks; no stage-final norms,
    as in Vivim). Names follow Hugging Face ``SegformerEncoder`` (``patch_embeddings.i``, ``block.i.j``)."""

    def __init__(
        self,
        in_channels: int,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        sr_ratios: Sequence[int],
        mlp_ratio: int = 4,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        rates = torch.linspace(0, drop_path_rate, max(sum(depths), 1)).tolist()
        self.out_channels = tuple(int(d) for d in embed_dims)
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

    def forward(self, frames: torch.Tensor, after_stage: StageHook | None = None) -> list[torch.Tensor]:
        features, x = [], frames
        for index, (embed, blocks) in enumerate(zip(self.patch_embeddings, self.block)):
            tokens, h, w = embed(x)
            for block in blocks:
                tokens = block(tokens, h, w)
            x = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
            if after_stage is not None:
                x = after_stage(index, x)
            features.append(x)
        return features


def backbone_names() -> list[str]:
    """Names of MONAI's ``FlexibleUNet`` backbone registry (``efficientnet-lite*`` included once this package's
    networks are imported)."""
    return sorted(FLEXUNET_BACKBONE.register_dict)


def regroup_efficientnet_keys(network: EfficientNet, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lukemelas EfficientNet keys ``_blocks.<i>.`` -> MONAI's ``_blocks.<stage>.<i>.`` (other keys unchanged)."""
    stage_of = {int(index): stage for stage, stack in enumerate(network._blocks) for index in stack._modules}
    flat = re.compile(r"^_blocks\.(\d+)\.(?!\d+\.)")

    def regroup(match: re.Match[str]) -> str:
        index = int(match.group(1))
        return f"_blocks.{stage_of.get(index, index)}.{index}."

    return {flat.sub(regroup, key): value for key, value in state.items()}


def build_backbone(
    name: str,
    in_channels: int = 3,
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
) -> tuple[nn.Module, tuple[int, ...]]:
    """A 2-D backbone of MONAI's ``FlexibleUNet`` registry and its output channels (one per output).

    Args:
        name: registry name, e.g. ``"efficientnet-lite0"``, ``"efficientnet-b0"``, ``"resnet18"``.
        in_channels: input channels.
        pretrained: load the ImageNet weights that ship inside a pip package (only the names of
            :data:`~vivim_monai.networks.weights.PACKAGED_WEIGHTS`; MONAI's own ``pretrained`` would download).
        weights: a local weight file for the backbone instead (its own state dict; EfficientNet files may use the
            lukemelas layout, whose classifier head is skipped).
    """
    registry = FLEXUNET_BACKBONE.register_dict
    if name not in registry:
        raise ValueError(f"unknown encoder {name!r}; choose 'mit' or one of {backbone_names()}")
    if pretrained and weights is not None:
        raise ValueError(f"encoder {name!r}: give pretrained=True or a weights file, not both")
    if pretrained and name not in PACKAGED_WEIGHTS:
        raise ValueError(
            f"encoder {name!r} has no pretrained weights inside an installed package (packaged: "
            f"{sorted(PACKAGED_WEIGHTS)}); nothing is downloaded: pass encoder_weights=<local file> instead"
        )
    entry = registry[name]
    parameters = {**entry["parameter"], "spatial_dims": 2, "in_channels": int(in_channels), "pretrained": pretrained}
    backbone = entry["type"](**parameters)
    if weights is not None:
        state = checkpoint_state(read_checkpoint(weights), weights)
        if isinstance(backbone, EfficientNet):
            state = regroup_efficientnet_keys(backbone, state)
            own = backbone.state_dict()
            state = {k: v for k, v in state.items() if k in own or not HEAD_KEYS.match(k)}
        load_state(backbone, state, weights)
    return backbone, tuple(int(c) for c in entry["feature_channel"])


class BackboneEncoder(nn.Module):
    """A MONAI ``FlexibleUNet`` backbone as a Vivim frame encoder: its last four outputs (strides 4..32).

    MONAI EfficientNets (``efficientnet-b*``, ``efficientnet-lite*``) run stage by stage so the hook's output feeds
    the next stage (Vivim's inline temporal layers); other backbones are run whole and the hook follows.
    ``drop_connect_rate`` resets an EfficientNet's stochastic depth (linear over its blocks up to that rate).
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        drop_connect_rate: float | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone, channels = build_backbone(name, in_channels, pretrained, weights)
        #: the file the encoder's weights came from (a packaged ImageNet file, a local file), None when random
        self.weights_source = getattr(self.backbone, "weights_source", None) or (
            os.fspath(weights) if weights else None
        )
        if drop_connect_rate is not None and isinstance(self.backbone, EfficientNet):
            blocks = [block for stack in self.backbone._blocks for block in stack]
            for index, block in enumerate(blocks):  # linear over the blocks, as MONAI's constructor
                block.drop_connect_rate = drop_connect_rate * index / len(blocks)
        if len(channels) < 4:
            raise ValueError(f"encoder {name!r} gives {len(channels)} feature maps; Vivim needs four (strides 4..32)")
        self.out_channels = channels[-4:]
        self.inline = isinstance(self.backbone, EfficientNet)

    def forward(self, frames: torch.Tensor, after_stage: StageHook | None = None) -> list[torch.Tensor]:
        hook = after_stage or (lambda index, x: x)
        if not self.inline:
            return [hook(index, x) for index, x in enumerate(self.backbone(frames)[-4:])]
        net = self.backbone
        x = net._swish(net._bn0(net._conv_stem(net._conv_stem_padding(frames))))
        outputs = [i for i in net.extract_stacks if i > 0][-4:]  # stack counts after which a stride-4..32 map exists
        features = []
        for index, stack in enumerate(net._blocks):
            x = stack(x)
            if index + 1 in outputs:
                x = hook(len(features), x)
                features.append(x)
        return features

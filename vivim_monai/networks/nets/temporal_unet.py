"""MONAI's FlexibleUNet with Vivim's ST-Mamba layers on its skip connections: the fair test of time on a U-Net.

On every dataset here the per-frame ``FlexibleUNet`` on the ImageNet EfficientNet-Lite0 encoder beats Vivim on the
same encoder, with or without ST-Mamba, and what it has that Vivim lacks is the U-Net decoder (skip connections up to
full resolution; Vivim's all-MLP decoder predicts at 1/4 resolution). Whether *time* helps is therefore best asked
of the winning network: this class is that network, frame by frame through the encoder and decoder, with
``mamba_depths[i]`` ST-Mamba layers (Yang et al., arXiv 2401.14168; :class:`~vivim_monai.networks.blocks.STMambaLayer`)
mixing each clip's encoder features at strides 4, 8, 16 and 32 before the decoder reads them.

Unlike Vivim the layers follow the encoder instead of sitting between its stages (any ``FlexibleUNet`` backbone
works, ResNets included); the decoder sees the temporally mixed maps through every skip connection. With all
``mamba_depths`` zero it computes exactly ``FrameWise(FlexibleUNet(...))``, and the state dicts share their keys
(``network.*``), so a per-frame model's weights load into it (``strict=False``: only ``temporal.*`` stays new).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
from monai.networks.nets import FlexibleUNet
from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

from vivim_monai.networks.blocks import st_mamba_stages

__all__ = ["TemporalFlexibleUNet"]

#: FlexibleUNet's encoders halve the resolution five times; the decoder needs H and W divisible by this
SPATIAL_MULTIPLE = 32


class TemporalFlexibleUNet(nn.Module):
    """``FlexibleUNet`` with ST-Mamba on its deepest four skip features, ``(B, C, H, W, T) -> (B, K, H, W, T)``.

    Args:
        in_channels: image channels.
        out_channels: classes K.
        backbone: a backbone of MONAI's ``FlexibleUNet`` registry (``"efficientnet-lite0"`` is registered by
            ``vivim_monai.networks``, with its ImageNet weights read from its pip package when ``pretrained``).
        pretrained: load the backbone's packaged weights (never downloaded).
        mamba_depths: ST-Mamba layers on the encoder features of strides 4, 8, 16, 32 (default as Vivim-lite0: none
            at stride 4, whose layer would cost as much as the other three on a CPU; one each after).
        decoder_channels: the U-Net decoder's widths (FlexibleUNet's default).
        mlp_ratio, d_state, d_conv, expand, dt_init: of each :class:`STMambaLayer`.
        mamba_drop_path_rate: stochastic depth of the ST-Mamba layers, linear over all of them.
        scan_backend: selective-scan backend (None = automatic / ``VIVIM_SCAN_BACKEND``).
        channels_last: run the U-Net on NHWC frames and weights, as :class:`FrameWise` does, so that a per-frame
            model's weights compute exactly what they compute there.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        backbone: str = "efficientnet-lite0",
        pretrained: bool = False,
        mamba_depths: Sequence[int] = (0, 1, 1, 1),
        decoder_channels: Sequence[int] = (256, 128, 64, 32, 16),
        mlp_ratio: int = 4,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_init: str = "mamba",
        mamba_drop_path_rate: float = 0.0,
        scan_backend: str | None = None,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        depths = [int(d) for d in mamba_depths]
        if len(depths) != 4 or min(depths) < 0:
            raise ValueError(f"mamba_depths needs four counts >= 0 (strides 4, 8, 16, 32), got {list(mamba_depths)}")
        if not 0.0 <= mamba_drop_path_rate < 1.0:
            raise ValueError(f"mamba_drop_path_rate must be in [0, 1), got {mamba_drop_path_rate}")
        self.in_channels, self.out_channels, self.mamba_depths = int(in_channels), int(out_channels), tuple(depths)
        self.network = FlexibleUNet(
            self.in_channels,
            self.out_channels,
            backbone,
            pretrained=pretrained,
            decoder_channels=tuple(decoder_channels),
        )
        self.channels_last = channels_last
        if channels_last:
            self.network.to(memory_format=torch.channels_last)
        widths = FLEXUNET_BACKBONE.register_dict[backbone]["feature_channel"]  # strides 2..32
        if len(widths) < 4:
            raise ValueError(f"backbone {backbone!r} gives {len(widths)} feature maps; ST-Mamba needs four")
        self._first = len(widths) - 4
        self.temporal = st_mamba_stages(
            widths[self._first :],
            depths,
            mamba_drop_path_rate,
            mlp_ratio=mlp_ratio,
            d_state=d_state,
            d_conv=d_conv,
            expand=expand,
            dt_init=dt_init,
            scan_backend=scan_backend,
        )

    def load_per_frame(self, state: Mapping[str, torch.Tensor]) -> None:
        """Start from a per-frame ``FrameWise(FlexibleUNet)`` state dict and compute exactly what it computes: its
        weights load into ``network.*`` and every ST-Mamba layer's residual branches start at zero (identity)."""
        result = self.load_state_dict(dict(state), strict=False)
        foreign = [k for k in result.missing_keys if not k.startswith("temporal.")] + list(result.unexpected_keys)
        if foreign:
            raise ValueError(f"not a per-frame FlexibleUNet state of this backbone: keys {sorted(foreign)[:5]} differ")
        for stage in self.temporal:
            for layer in stage:
                layer.zero_residuals_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects a clip (B, C, H, W, T), got shape {tuple(x.shape)}")
        batch, channels, height, width, frames = x.shape
        if channels != self.in_channels:
            raise ValueError(f"{type(self).__name__} was built for {self.in_channels} channels, input has {channels}")
        if height % SPATIAL_MULTIPLE or width % SPATIAL_MULTIPLE or frames < 1:
            raise ValueError(
                f"{type(self).__name__} needs H and W multiples of {SPATIAL_MULTIPLE} and T >= 1, got "
                f"H={height}, W={width}, T={frames}; resize or pad the frames (e.g. MONAI DivisiblePadd)"
            )
        unet = self.network
        frames_2d = x.permute(0, 4, 1, 2, 3).reshape(batch * frames, channels, height, width)
        if self.channels_last:
            frames_2d = frames_2d.contiguous(memory_format=torch.channels_last)
        features = list(unet.encoder(frames_2d))
        for index, stage in enumerate(self.temporal):
            features[self._first + index] = stage(features[self._first + index], frames)
        logits = unet.segmentation_head(unet.decoder(features, unet.skip_connect))
        return logits.reshape(batch, frames, *logits.shape[1:]).permute(0, 2, 3, 4, 1)

"""Per-frame baseline: any MONAI 2-D network applied to every frame of a (B, C, H, W, T) clip.

This is the frame-by-frame comparison point for Vivim (the claim under test is that modelling time helps).
Frames are folded into the batch, so batch-norm statistics and throughput match a 2-D model trained on frames.
The frames and the 2-D network's weights are kept channels-last (NHWC) by default: oneDNN's CPU convolutions,
depthwise ones above all, run faster on that layout with the same arithmetic (``docs/performance.md`` §8d;
PyTorch's channels-last tutorial).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
from monai.networks.nets import UNet

__all__ = ["FrameWise", "PerFrameUNet"]


class FrameWise(nn.Module):
    """Wrap a 2-D network ``(N, C, H, W) -> (N, K, H, W)`` so it maps clips ``(B, C, H, W, T) -> (B, K, H, W, T)``.

    ``channels_last`` stores the network's 4-D weights and feeds its frames in the NHWC memory layout (a layout,
    not a change of values: state dicts load into and from either layout unchanged).
    """

    def __init__(self, network: nn.Module, channels_last: bool = True) -> None:
        super().__init__()
        self.network = network.to(memory_format=torch.channels_last) if channels_last else network
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"{type(self).__name__} expects a clip (B, C, H, W, T), got shape {tuple(x.shape)}")
        batch, channels, height, width, frames = x.shape
        out = self.forward_frames(x.permute(0, 4, 1, 2, 3).reshape(batch * frames, channels, height, width))
        return out.reshape(batch, frames, *out.shape[1:]).permute(0, 2, 3, 4, 1)

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The 2-D network on a batch of frames ``(N, C, H, W)``, in the wrapper's memory layout."""
        if self.channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        return self.network(frames)


class PerFrameUNet(FrameWise):
    """MONAI 2-D ``UNet`` (residual units) applied frame by frame; JSON-serialisable arguments for bundle configs.

    The defaults (channels 32..512, 2 residual units) give about 6.5 M parameters, comparable to ``Vivim("b0")``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 1,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (2, 2, 2, 2),
        num_res_units: int = 2,
        dropout: float = 0.0,
        norm: str = "batch",
        channels_last: bool = True,
    ) -> None:
        if len(strides) != len(channels) - 1:
            raise ValueError(f"PerFrameUNet needs len(strides) == len(channels) - 1, got {strides} and {channels}")
        super().__init__(
            UNet(
                spatial_dims=2,
                in_channels=in_channels,
                out_channels=out_channels,
                channels=tuple(channels),
                strides=tuple(strides),
                num_res_units=num_res_units,
                dropout=dropout,
                norm=norm,
            ),
            channels_last=channels_last,
        )

"""``ToChannelsd``: give every cine the channel count the network was built for.

Vivim takes RGB frames (SegFormer's ImageNet-pretrained stem); ultrasound cines are often grey, endoscopy colour. One
network serves both when grey frames are replicated to three channels; the reverse, colour to grey, uses the ITU-R
BT.601 luma weights.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["ToChannelsd"]

_LUMA = (0.299, 0.587, 0.114)


class ToChannelsd(MapTransform):
    """Make ``(C, H, W, T)`` images have ``channels`` channels (1 -> 3 replicates, 3 -> 1 takes luma)."""

    def __init__(self, keys: KeysCollection, channels: int = 3, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"ToChannelsd: channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            have = image.shape[0]
            if have == self.channels:
                continue
            if have == 1:
                d[key] = image.repeat(self.channels, *([1] * (image.ndim - 1)))
            elif have == 3:
                weights = torch.tensor(_LUMA, dtype=torch.float32).reshape(3, *([1] * (image.ndim - 1)))
                d[key] = (image.float() * weights.to(image.device)).sum(0, keepdim=True)
            else:
                name = getattr(image, "meta", {}).get("filename_or_obj", key)
                raise ValueError(f"{name}: {have} channels cannot become {self.channels} (expected 1 or 3)")
        return d

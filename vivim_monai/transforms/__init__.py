"""Transforms for ultrasound cines: loading datalist entries, fan masks, clip-consistent augmentation (on MONAI)."""

from vivim_monai.transforms.channels import ToChannelsd
from vivim_monai.transforms.classes import ClassIndicesd
from vivim_monai.transforms.fan import (
    FAN_METHODS,
    FanMaskd,
    estimate_fan_mask,
    fan_mask_from_image,
    fan_mask_from_regions,
    mask_iou,
)
from vivim_monai.transforms.load import LoadCined, load_fan_image

__all__ = [
    "ClassIndicesd",
    "FAN_METHODS",
    "FanMaskd",
    "estimate_fan_mask",
    "fan_mask_from_image",
    "fan_mask_from_regions",
    "LoadCined",
    "ToChannelsd",
    "load_fan_image",
    "mask_iou",
]

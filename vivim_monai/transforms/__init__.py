"""Transforms for ultrasound cines: fan masks (and, built on MONAI, clip-consistent augmentation)."""

from vivim_monai.transforms.augment import clip_augmentation
from vivim_monai.transforms.fan import (
    FAN_METHODS,
    FanMaskd,
    estimate_fan_mask,
    fan_mask_from_image,
    fan_mask_from_regions,
    mask_iou,
)

__all__ = [
    "clip_augmentation",
    "FAN_METHODS",
    "FanMaskd",
    "estimate_fan_mask",
    "fan_mask_from_image",
    "fan_mask_from_regions",
    "mask_iou",
]

"""Clip-consistent augmentation: one random draw per clip, applied identically to every frame and to the label.

MONAI's dictionary ``Rand*d`` transforms draw their parameters once per call and apply them to every listed key and
channel; on ``(C, H, W, T)`` clips, keeping every geometric range zero along the third (time) axis makes each frame an
exact transform of the same geometry (the public Vivim code drew colour jitter per frame and its fork drew geometry
per frame). Labels use nearest-neighbour interpolation; intensity changes touch the image only. Validation and
inference use no augmentation at all.
"""

from __future__ import annotations

import math
from typing import Sequence

from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandSpatialCropd,
    RandZoomd,
    SpatialPadd,
)

__all__ = ["clip_augmentation"]


def clip_augmentation(
    image_key: str = "image",
    label_key: str | None = "label",
    crop_size: Sequence[int] | None = None,
    flip_prob: float = 0.5,
    vertical_flip_prob: float | None = None,
    rotate_degrees: float = 15.0,
    rotate_prob: float = 0.3,
    zoom: tuple[float, float] = (0.9, 1.1),
    zoom_prob: float = 0.3,
    blur_sigma: tuple[float, float] = (0.5, 1.5),
    blur_prob: float = 0.2,
    intensity_scale: float = 0.3,
    intensity_prob: float = 0.5,
    gamma: tuple[float, float] = (0.7, 1.5),
    gamma_prob: float = 0.2,
) -> Compose:
    """The ovarian fork's "medium" recipe, drawn once per clip (rotation, flips, zoom, crop, blur, intensity, gamma).

    Args:
        image_key, label_key: the clip ``(C, H, W, T)`` and its class-index label ``(1, H, W, T)`` (None: no label).
        crop_size: optional random crop (H, W) taken in the frame plane after padding to at least that size.
        flip_prob, vertical_flip_prob: left-right and up-down flip probabilities (None: up-down as left-right);
            ultrasound has a physical depth axis, so up-down flips make images no probe produces.
    """
    keys = [image_key] + ([label_key] if label_key else [])
    geometric_modes = ("bilinear", "nearest")[: len(keys)]
    transforms = [
        RandAffined(
            keys,
            prob=rotate_prob,
            rotate_range=(0.0, 0.0, math.radians(rotate_degrees)),  # about the time axis = in the frame plane
            mode=geometric_modes,
            padding_mode="zeros",
        ),
        RandFlipd(keys, prob=flip_prob if vertical_flip_prob is None else vertical_flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=flip_prob, spatial_axis=1),
        RandZoomd(
            keys,
            prob=zoom_prob,
            min_zoom=(zoom[0], zoom[0], 1.0),
            max_zoom=(zoom[1], zoom[1], 1.0),
            mode=("bilinear", "nearest-exact")[: len(keys)],
            keep_size=True,
        ),
    ]
    if crop_size is not None:
        size = (int(crop_size[0]), int(crop_size[1]), -1)
        transforms += [SpatialPadd(keys, spatial_size=size), RandSpatialCropd(keys, roi_size=size, random_size=False)]
    transforms += [
        RandGaussianSmoothd(
            image_key, prob=blur_prob, sigma_x=blur_sigma, sigma_y=blur_sigma, sigma_z=(0.0, 0.0)
        ),  # no blur across frames
        RandScaleIntensityd(image_key, factors=intensity_scale, prob=intensity_prob, channel_wise=False),
        RandAdjustContrastd(image_key, prob=gamma_prob, gamma=gamma),
    ]
    return Compose(transforms)

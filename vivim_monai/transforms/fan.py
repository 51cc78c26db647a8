"""Fan (sector) masks of ultrasound cines: where the image is, as opposed to text, ECG strips and black borders.

Three sources, recorded in the mask's metadata as ``fan_method``:

* ``"regions"``: the union of the 2-D tissue regions of the DICOM ``SequenceOfUltrasoundRegions`` (rectangles);
  ignored when a region does not fit inside the frame (downsampled files keep the original geometry);
* ``"image"``: a supplied mask image (non-zero = fan), e.g. the ovarian layout's ``fan.png``;
* ``"estimated"``: from the cine itself — pixels whose intensity changes over time (or, for fewer than three
  frames, pixels that are not black), opened to drop thin text and traces, the largest connected component,
  filled and replaced by its convex hull (a sector is convex).

:class:`FanMaskd` adds the mask as a ``(1, H, W, T)`` MetaTensor under its own key; MONAI's ``MaskIntensityd``
zeroes outside it and ``CropForegroundd(source_key=...)`` crops to its bounding box, invertibly (``Invertd``).
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import FillHoles, KeepLargestConnectedComponent, MapTransform
from PIL import Image, ImageDraw
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

__all__ = ["FAN_METHODS", "FanMaskd", "estimate_fan_mask", "fan_mask_from_image", "fan_mask_from_regions", "mask_iou"]

FAN_METHODS = ("auto", "regions", "image", "estimated")
_TISSUE_2D = 1  # RegionSpatialFormat 2-D


def fan_mask_from_regions(regions: Sequence[Mapping[str, Any]], height: int, width: int) -> np.ndarray | None:
    """Union of the 2-D regions' rectangles, or None when there is none or one does not fit the frame."""
    mask = np.zeros((height, width), dtype=bool)
    found = False
    for region in regions:
        if region.get("spatial_format") != _TISSUE_2D:
            continue
        x0, y0, x1, y1 = (int(region.get(k, -1)) for k in ("x0", "y0", "x1", "y1"))
        if not (0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height):
            return None
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
        found = True
    return mask if found else None


def fan_mask_from_image(image: np.ndarray | torch.Tensor, height: int, width: int, source: str = "mask") -> np.ndarray:
    """Non-zero pixels of a mask image (H, W), (1, H, W) or (1, H, W, 1); its size must match the frames."""
    array = np.asarray(image.detach().cpu() if isinstance(image, torch.Tensor) else image)
    array = np.squeeze(array)
    if array.ndim == 3:  # colour mask image
        array = array.max(axis=-1)
    if array.shape != (height, width):
        raise ValueError(f"{source}: fan mask of shape {array.shape} does not match the frames ({height}, {width})")
    return array > 0


def _convex_fill(mask: np.ndarray) -> np.ndarray:
    points = np.argwhere(mask)
    if len(points) < 3:
        return mask
    try:
        hull = ConvexHull(points)
    except QhullError:  # all points on a line
        return mask
    canvas = Image.new("1", (mask.shape[1], mask.shape[0]), 0)
    ImageDraw.Draw(canvas).polygon([(int(x), int(y)) for y, x in points[hull.vertices]], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool) | mask


_KEEP_LARGEST = KeepLargestConnectedComponent(is_onehot=False, independent=False, connectivity=1)
_FILL_HOLES = FillHoles(connectivity=1)


def _largest_component(active: np.ndarray, close_radius: int, open_radius: int) -> np.ndarray:
    """Open away thin text/traces, close speckle gaps, keep the largest (4-connected) component."""
    cross = ndimage.generate_binary_structure(2, 1)
    opened = ndimage.binary_opening(active, ndimage.iterate_structure(cross, open_radius))
    closed = ndimage.binary_closing(opened, ndimage.iterate_structure(cross, close_radius)) | opened
    return np.asarray(_KEEP_LARGEST(closed[None].astype(np.uint8))[0], dtype=bool)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` with every background region that does not reach the border (4-connected) filled."""
    return np.asarray(_FILL_HOLES(mask[None].astype(np.uint8))[0], dtype=bool)


def estimate_fan_mask(
    cine: np.ndarray | torch.Tensor,
    motion_threshold: float = 0.5,
    intensity_threshold: float = 8.0,
    open_fraction: float = 0.02,
    close_fraction: float = 0.02,
    min_fraction: float = 0.02,
) -> np.ndarray:
    """Estimate the fan of a cine ``(C, H, W, T)`` with intensities in 0..255; returns a bool mask (H, W).

    Imaged pixels change over time (speckle, motion) while burned-in text, scales and borders are identical in every
    frame; moving ECG traces are thin and disappear in the morphological opening. With fewer than three frames, or
    when almost nothing moves (a probe in air), pixels brighter than ``intensity_threshold`` are used instead.

    Args:
        motion_threshold: temporal standard deviation (grey levels) above which a pixel counts as imaged.
        intensity_threshold: mean grey level above which a pixel counts as imaged (fallback).
        open_fraction, close_fraction: radii of the opening / closing, as fractions of min(H, W).
        min_fraction: a fan smaller than this fraction of the frame triggers the fallback (or the whole frame).
    """
    array = np.asarray(cine.detach().cpu() if isinstance(cine, torch.Tensor) else cine, dtype=np.float32)
    grey = array.mean(axis=0)  # (H, W, T)
    height, width, frames = grey.shape
    size = min(height, width)
    radii = max(1, int(round(close_fraction * size))), max(1, int(round(open_fraction * size)))
    candidates = [grey.std(axis=-1) > motion_threshold] if frames >= 3 else []
    candidates.append(grey.mean(axis=-1) > intensity_threshold)
    for active in candidates:
        fan = _largest_component(active, *radii)
        if fan.mean() >= min_fraction:
            return _convex_fill(_fill_holes(fan))
    return np.ones((height, width), dtype=bool)  # nothing distinguishable: keep the whole frame


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


class FanMaskd(MapTransform):
    """Add a fan mask ``(1, H, W, T)`` of the first present key under ``mask_key``, with ``fan_method`` in its metadata.

    Args:
        keys: the cine key (``(C, H, W, T)`` MetaTensor, 0..255 intensities).
        mask_key: where to store the mask.
        method: ``"auto"`` (image if ``image_key`` is present, else regions, else estimated), or one source.
        image_key: optional key holding a fan mask image (e.g. a loaded ``fan.png``).
        estimate_kwargs: passed to :func:`estimate_fan_mask`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mask_key: str = "fan",
        method: str = "auto",
        image_key: str | None = None,
        estimate_kwargs: dict | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if method not in FAN_METHODS:
            raise ValueError(f"FanMaskd: method must be one of {FAN_METHODS}, got {method!r}")
        self.mask_key, self.method, self.image_key = mask_key, method, image_key
        self.estimate_kwargs = estimate_kwargs or {}

    def _mask(self, cine: torch.Tensor, data: Mapping[Hashable, Any]) -> tuple[np.ndarray, str]:
        _, height, width, _ = cine.shape
        meta = cine.meta if isinstance(cine, MetaTensor) else {}
        source = str(meta.get("filename_or_obj", "cine"))
        if self.method in ("auto", "image") and self.image_key and data.get(self.image_key) is not None:
            return (
                fan_mask_from_image(data[self.image_key], height, width, source=f"{source} ({self.image_key})"),
                "image",
            )
        if self.method == "image":
            raise ValueError(f"{source}: FanMaskd(method='image') needs the mask image under {self.image_key!r}")
        if self.method in ("auto", "regions"):
            mask = fan_mask_from_regions(meta.get("ultrasound_regions") or [], height, width)
            if mask is not None:
                return mask, "regions"
            if self.method == "regions":
                raise ValueError(f"{source}: no usable 2-D ultrasound region for a fan mask (use method='estimated')")
        return estimate_fan_mask(cine, **self.estimate_kwargs), "estimated"

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        key = next(iter(self.key_iterator(d)), None)  # one mask per sample, from the first (image) key
        if key is None:
            return d
        cine = d[key]
        mask, method = self._mask(cine, d)
        tensor = torch.from_numpy(mask)[None, :, :, None].expand(1, -1, -1, cine.shape[-1]).to(torch.float32)
        affine = cine.affine if isinstance(cine, MetaTensor) else None
        meta = {"fan_method": method, "filename_or_obj": getattr(cine, "meta", {}).get("filename_or_obj", "")}
        d[self.mask_key] = MetaTensor(tensor.contiguous(), affine=affine, meta=meta)
        if isinstance(cine, MetaTensor):
            cine.meta["fan_method"] = method
        return d

"""``LoadCined``: load a datalist entry (cine, labels, optional fan mask image) into aligned tensors.

The dictionary counterpart of :func:`vivim_monai.data.load_cine` and :func:`vivim_monai.data.load_label_cine` for
bundle configs: the image becomes a ``(C, H, W, T)`` MetaTensor (float32 by default, like MONAI's ``LoadImaged``),
the label a uint8 class-index ``(1, H, W, T)`` checked against the image's frames, and a fan mask image (one file,
or one per frame: their union) a boolean ``(H, W)`` array for ``FanMaskd(image_key=...)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import Transform

from vivim_monai.data.cine import load_cine, read_frame_image
from vivim_monai.data.dicom import CineReadError
from vivim_monai.data.labels import LABEL_FORMATS, OVARIAN_CLASS_FILES, check_label_matches, load_label_cine

__all__ = ["LoadCined", "load_fan_image"]


def load_fan_image(source: str | os.PathLike | Sequence[str | os.PathLike]) -> np.ndarray:
    """Boolean fan mask (H, W): non-zero pixels of one mask image, or the union of several (one per frame)."""
    paths = [Path(source)] if isinstance(source, (str, os.PathLike)) else [Path(p) for p in source]
    if not paths:
        raise CineReadError("empty list of fan mask images")
    union: np.ndarray | None = None
    for path in paths:
        mask = read_frame_image(path).max(axis=-1) > 0
        if union is not None and mask.shape != union.shape:
            raise CineReadError(f"{path}: fan mask of size {mask.shape} differs from {paths[0]} {union.shape}")
        union = mask if union is None else union | mask
    return union


class LoadCined(Transform):
    """Load ``image`` (and, when present, ``label`` and ``fan``) of a datalist entry.

    Args:
        image_key, label_key, fan_key: entry keys; the label and fan keys are optional in each entry.
        label_format: default :data:`~vivim_monai.data.labels.LABEL_FORMATS` entry; an entry's own
            ``"label_format"`` value wins (datalists written by ``scripts/make_datalist.py`` carry one).
        class_files: class image names for ``"class_masks"`` labels.
        threshold: foreground threshold for ``"binary"`` labels.
        dtype: image dtype (None keeps the stored one).
    """

    def __init__(
        self,
        image_key: str = "image",
        label_key: str = "label",
        fan_key: str = "fan",
        label_format: str = "index",
        class_files: Sequence[str] = OVARIAN_CLASS_FILES,
        threshold: float = 0.0,
        dtype: torch.dtype | None = torch.float32,
    ) -> None:
        if label_format not in LABEL_FORMATS:
            raise ValueError(f"LoadCined: label_format must be one of {LABEL_FORMATS}, got {label_format!r}")
        self.image_key, self.label_key, self.fan_key = image_key, label_key, fan_key
        self.label_format, self.class_files, self.threshold, self.dtype = label_format, class_files, threshold, dtype

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.image_key not in d:
            raise KeyError(f"LoadCined: entry has no {self.image_key!r} key (keys: {sorted(map(str, d))})")
        image = load_cine(d[self.image_key], dtype=self.dtype)
        if d.get(self.label_key) is not None:
            label = load_label_cine(
                d[self.label_key],
                label_format=d.get("label_format", self.label_format),
                class_files=self.class_files,
                threshold=self.threshold,
                frame_shape=tuple(image.shape[1:3]),
            )
            check_label_matches(image, label, _describe(image), _describe(label))
            label.affine = image.affine
            d[self.label_key] = label
        if d.get(self.fan_key) is not None and not isinstance(d[self.fan_key], (np.ndarray, torch.Tensor)):
            d[self.fan_key] = load_fan_image(d[self.fan_key])
        d[self.image_key] = image
        return d


def _describe(tensor: Any) -> str:
    """The file a loaded tensor came from (its first frame file for frame lists)."""
    meta = getattr(tensor, "meta", {})
    files = meta.get("frame_files")
    return str(files[0]) if files else str(meta.get("filename_or_obj", "?"))

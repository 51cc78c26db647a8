"""``ClassIndicesd``: per-class scores to class indices, as MONAI's ``AsDiscreted(argmax=True)`` (faster on CPU)."""

from __future__ import annotations

from typing import Any, Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.data import get_track_meta
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from vivim_monai.utils import argmax_indices

__all__ = ["ClassIndicesd"]


class ClassIndicesd(MapTransform):
    """``(K, H, W, T)`` scores -> ``(1, H, W, T)`` class indices (float32, metadata kept), like
    ``AsDiscreted(argmax=True)``: same indices, same type, about a ninth of its CPU time on full-resolution cines
    (:func:`vivim_monai.utils.argmax_indices`)."""

    def __init__(self, keys: KeysCollection, dim: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.dim = dim

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            scores = convert_to_tensor(d[key], track_meta=get_track_meta())
            indices = argmax_indices(scores.as_tensor() if hasattr(scores, "as_tensor") else scores, self.dim, True)
            d[key] = convert_to_dst_type(indices, scores, dtype=torch.float32)[0]
        return d

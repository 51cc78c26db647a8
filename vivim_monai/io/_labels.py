"""Shared input checks of the writers: label volumes as ``(H, W, T)`` integer numpy arrays."""

from __future__ import annotations

from typing import Any

import numpy as np
from monai.utils import convert_to_numpy

__all__ = ["as_label_volume"]


def as_label_volume(labels: Any) -> np.ndarray:
    """``labels`` ``(H, W, T)`` or ``(1, H, W, T)`` of non-negative integers as an ``(H, W, T)`` integer array.

    Float arrays are accepted when they hold whole numbers (e.g. an ``AsDiscrete(argmax=True)`` output).
    """
    array = convert_to_numpy(labels, wrap_sequence=True)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"expected labels (H, W, T) or (1, H, W, T), got shape {array.shape}")
    if array.dtype == bool:
        array = array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise ValueError("labels must hold whole class indices; apply argmax to network outputs first")
        array = array.astype(np.int64)
    if array.size and array.min() < 0:
        raise ValueError(f"labels must be non-negative class indices, found {array.min()}")
    return array

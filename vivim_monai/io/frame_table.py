"""Per-frame class areas of a predicted cine as CSV: one row per frame, pixels and (when known) mm²."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vivim_monai.io._labels import as_label_volume
from vivim_monai.io.atomic import atomic_write_csv

__all__ = ["frame_areas", "write_frame_csv"]


def frame_areas(labels: Any, num_classes: int) -> np.ndarray:
    """Pixel counts per frame and class, ``(T, num_classes)`` int64; class indices must be below ``num_classes``."""
    array = as_label_volume(labels)
    if array.size and array.max() >= num_classes:
        raise ValueError(f"labels contain class {array.max()} but only {num_classes} classes are named")
    frames = array.shape[-1]
    flat = np.moveaxis(array, -1, 0).reshape(frames, -1).astype(np.int64)
    offsets = np.arange(frames, dtype=np.int64)[:, None] * num_classes
    return np.bincount((flat + offsets).ravel(), minlength=frames * num_classes).reshape(frames, num_classes)


def _number(value: float) -> str:
    return f"{value:.4f}"


def write_frame_csv(
    labels: Any,
    path: str | os.PathLike,
    class_names: Sequence[str],
    spacing_mm: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
) -> Path:
    """Write the per-frame areas of every class of ``labels`` ``(H, W, T)``; returns ``path``.

    Columns: ``frame`` (0-based), ``time_ms`` (frame start, ``frame * frame_time_ms``), then per class
    ``<name>_area_px`` and ``<name>_area_mm2`` (pixel count times row x column spacing). The columns are the same
    for every cine so tables concatenate; values that are unknown (no spacing, no frame time) are left empty.
    Written atomically.
    """
    names = [str(name) for name in class_names]
    if len(set(names)) != len(names):
        raise ValueError(f"class names must be unique, got {names}")
    areas = frame_areas(labels, len(names))
    pixel_mm2 = float(spacing_mm[0]) * float(spacing_mm[1]) if spacing_mm is not None else None
    header = ["frame", "time_ms"] + [f"{name}_area_{unit}" for name in names for unit in ("px", "mm2")]
    rows = []
    for frame, counts in enumerate(areas):
        row = [str(frame), _number(frame * frame_time_ms) if frame_time_ms is not None else ""]
        for count in counts:
            row += [str(int(count)), _number(count * pixel_mm2) if pixel_mm2 is not None else ""]
        rows.append(row)

    return atomic_write_csv(path, header, rows)

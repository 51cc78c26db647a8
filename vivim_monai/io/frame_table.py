"""Per-frame class areas of a predicted cine: a CSV (one row per frame, pixels and, when known, mm²) and a PNG plot of
each structure's area over time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vivim_monai.io._labels import as_label_volume
from vivim_monai.io.draw import Series, draw_legend, draw_panel, font
from vivim_monai.io.overlay import DEFAULT_CLASS_COLOURS
from vivim_monai.metrics import class_areas
from vivim_monai.utils.atomic import atomic_write, atomic_write_csv

__all__ = ["area_curves", "frame_areas", "write_area_plot", "write_frame_csv"]


def frame_areas(labels: Any, num_classes: int) -> np.ndarray:
    """Pixel counts per frame and class, ``(T, num_classes)`` int64; class indices must be below ``num_classes``."""
    array = as_label_volume(labels)
    if array.size and array.max() >= num_classes:
        raise ValueError(f"labels contain class {array.max()} but only {num_classes} classes are named")
    return class_areas(array, num_classes)


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


def area_curves(
    labels: Any, num_classes: int, spacing_mm: Sequence[float] | None = None, frame_time_ms: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What the area plot draws: the frame times ``(T,)`` in s (frame numbers when ``frame_time_ms`` is unknown) and
    the class areas ``(T, num_classes)`` in mm² (pixels when ``spacing_mm`` is unknown)."""
    areas = frame_areas(labels, num_classes).astype(np.float64)
    if spacing_mm is not None:
        areas *= float(spacing_mm[0]) * float(spacing_mm[1])
    times = np.arange(len(areas), dtype=np.float64)
    if frame_time_ms:
        times *= float(frame_time_ms) / 1000.0
    return times, areas


def write_area_plot(
    labels: Any,
    path: str | os.PathLike,
    class_names: Sequence[str],
    spacing_mm: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
    title: str = "",
) -> Path:
    """Plot the area of every foreground class of ``labels`` ``(H, W, T)`` over the frames as a PNG; returns ``path``.

    One line per class in its overlay colour (:data:`DEFAULT_CLASS_COLOURS`), so the plot matches the GIF. Areas are
    in mm² when ``spacing_mm`` (row, column) is known, else in pixels; time in seconds when ``frame_time_ms`` is
    known, else frame numbers (0-based, as in the CSV). Written atomically.
    """

    names = [str(name) for name in class_names]
    times, areas = area_curves(labels, len(names), spacing_mm, frame_time_ms)
    colours = [tuple(DEFAULT_CLASS_COLOURS[k % len(DEFAULT_CLASS_COLOURS)]) for k in range(len(names) - 1)]
    series = [Series(list(zip(times.tolist(), areas[:, k + 1].tolist())), colours[k], 3) for k in range(len(colours))]
    width, height, head = 760, 420, 28
    image = Image.new("RGB", (width, head + height + 24 * (1 + len(colours) // 5) + 8), "white")
    ImageDraw.Draw(image).text((16, 8), title or "Structure area over time", fill="black", font=font(16))
    draw_panel(
        image,
        (0, head, width, head + height),
        series,
        "area per frame" + ("" if spacing_mm is not None else " (pixel spacing unknown)"),
        "time (s)" if frame_time_ms else "frame",
        "area (mm^2)" if spacing_mm is not None else "area (pixels)",
        integer_x=not frame_time_ms,
    )
    draw_legend(image, (80, head + height + 4), list(zip(names[1:], colours)), width - 100)
    return atomic_write(path, lambda name: image.save(name, format="PNG"))

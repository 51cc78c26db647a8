"""Confusion-matrix heatmaps as PNG, drawn with Pillow (no plotting library needed in the bundle's environment)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw

from vivim_monai.io.draw import font as default_font
from vivim_monai.io.draw import text_size
from vivim_monai.utils import atomic_write

__all__ = ["write_confusion_png"]

_LOW, _HIGH, _MISSING = np.array([255.0, 255.0, 255.0]), np.array([8.0, 48.0, 107.0]), (200, 200, 200)
_PAD = 10


def write_confusion_png(
    path: str | os.PathLike,
    values: np.ndarray,
    class_names: Sequence[str],
    title: str,
    shade: np.ndarray | None = None,
    fmt: Callable[[float], str] = lambda v: f"{v:.3f}",
) -> Path:
    """Write a K x K heatmap (rows: ground truth, columns: prediction) with class labels and cell values.

    ``shade`` (default ``values``) in [0, 1] sets each cell's colour, white to dark blue; NaN cells are grey and
    read "n/a". Written atomically; returns ``path``.
    """
    values = np.asarray(values, dtype=np.float64)
    shade = np.asarray(shade if shade is not None else values, dtype=np.float64)
    names = [str(name) for name in class_names]
    k = len(names)
    if values.shape != (k, k) or shade.shape != (k, k):
        raise ValueError(f"expected {k} x {k} matrices for {k} class names, got {values.shape} and {shade.shape}")
    font, bold = default_font(13), default_font(15)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [["n/a" if math.isnan(v) else fmt(v) for v in row] for row in values]
    cell_w = max([72] + [text_size(probe, t, font)[0] + 12 for t in [*names, *sum(texts, [])]])
    cell_h = 40
    label_w = max(text_size(probe, f"{name}", font)[0] for name in names) + 2 * _PAD
    axis_title = "ground truth (rows) / prediction (columns)"
    title_h = text_size(probe, title, bold)[1] + text_size(probe, axis_title, font)[1] + 3 * _PAD
    header_h = text_size(probe, "Ag", font)[1] + 2 * _PAD
    width = max(label_w + k * cell_w, text_size(probe, title, bold)[0], text_size(probe, axis_title, font)[0])
    width += 2 * _PAD
    height = title_h + header_h + k * cell_h + _PAD
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((_PAD, _PAD), title, fill="black", font=bold)
    draw.text((_PAD, 2 * _PAD + text_size(probe, title, bold)[1]), axis_title, fill=(90, 90, 90), font=font)
    top, left = title_h + header_h, _PAD + label_w
    for j, name in enumerate(names):
        w, h = text_size(draw, name, font)
        draw.text((left + j * cell_w + (cell_w - w) / 2, title_h + (header_h - h) / 2), name, fill="black", font=font)
    for i, name in enumerate(names):
        w, h = text_size(draw, name, font)
        draw.text((_PAD + label_w - _PAD - w, top + i * cell_h + (cell_h - h) / 2), name, fill="black", font=font)
        for j in range(k):
            fraction = shade[i, j]
            if math.isnan(fraction):
                colour, ink = _MISSING, "black"
            else:
                fraction = min(max(fraction, 0.0), 1.0)
                colour = tuple(int(round(c)) for c in _LOW + fraction * (_HIGH - _LOW))
                ink = "white" if fraction > 0.5 else "black"
            box = (left + j * cell_w, top + i * cell_h, left + (j + 1) * cell_w - 1, top + (i + 1) * cell_h - 1)
            draw.rectangle(box, fill=colour, outline=(160, 160, 160))
            w, h = text_size(draw, texts[i][j], font)
            draw.text((box[0] + (cell_w - w) / 2, box[1] + (cell_h - h) / 2), texts[i][j], fill=ink, font=font)
    return atomic_write(path, lambda name: image.save(name, format="PNG"))

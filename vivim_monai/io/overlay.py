"""Overlay animations: the cine with the predicted classes coloured, as an endlessly looping GIF (Pillow)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from monai.utils import convert_to_numpy
from PIL import Image

from vivim_monai.io._labels import as_label_volume
from vivim_monai.utils.atomic import atomic_write

__all__ = ["DEFAULT_CLASS_COLOURS", "overlay_frames", "write_overlay_gif"]

#: RGB colours of classes 1, 2, ... (class 0, background, stays uncoloured); cycled for more classes.
DEFAULT_CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 48, 48),
    (48, 160, 255),
    (64, 220, 64),
    (255, 200, 0),
    (200, 64, 255),
    (0, 220, 220),
)
_MIN_GIF_DELAY_MS = 20  # browsers slow down GIF delays below 20 ms to 100 ms


def _iter_overlay(
    cine: Any,
    labels: Any,
    class_colours: Sequence[Sequence[int]] | None,
    alpha: float,
    frame_step: int = 1,
) -> Iterator[np.ndarray]:
    """Yield ``(H, W, 3)`` uint8 overlay frames one at a time (every ``frame_step``-th), so long cines are never
    converted to float as a whole."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if frame_step < 1:
        raise ValueError(f"frame_step must be >= 1, got {frame_step}")
    array = convert_to_numpy(cine, wrap_sequence=True)
    if array.ndim != 4 or array.size == 0:
        raise ValueError(f"expected a non-empty cine (C, H, W, T), got shape {array.shape}")
    volume = as_label_volume(labels)
    if volume.shape != array.shape[1:]:
        raise ValueError(f"labels (H, W, T) {volume.shape} do not match the cine {array.shape[1:]}")
    colours = np.asarray(class_colours if class_colours is not None else DEFAULT_CLASS_COLOURS, dtype=np.float32)
    if colours.ndim != 2 or colours.shape[1] != 3 or len(colours) == 0:
        raise ValueError("class_colours must be a non-empty sequence of RGB triples")
    low, high = float(array.min()), float(array.max())
    stretch = low < 0.0 or high > 255.0
    channels = [0, 1, 2] if array.shape[0] == 3 else [0, 0, 0]
    for frame in range(0, array.shape[-1], frame_step):
        image = array[channels, ..., frame].astype(np.float32).transpose(1, 2, 0)
        if stretch:
            image = (image - low) * (255.0 / (high - low)) if high > low else np.zeros_like(image)
        image = np.rint(np.clip(image, 0.0, 255.0))
        frame_labels = volume[..., frame]
        labelled = frame_labels > 0
        colour = colours[(frame_labels[labelled] - 1) % len(colours)]
        image[labelled] = np.rint((1.0 - alpha) * image[labelled] + alpha * colour)
        yield np.clip(image, 0, 255).astype(np.uint8)


def overlay_frames(
    cine: Any,
    labels: Any,
    class_colours: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.4,
) -> np.ndarray:
    """Blend class colours into the cine: ``(T, H, W, 3)`` uint8 frames from ``cine`` ``(C, H, W, T)`` and
    ``labels`` ``(H, W, T)``.

    Intensities already in 0..255 are kept (8-bit cines look as in the source); any other range is stretched
    linearly from the cine's minimum to its maximum. One channel is shown as grey, three as RGB, otherwise channel 0
    as grey. Pixels of class ``k >= 1`` become ``(1 - alpha) * image + alpha * class_colours[k - 1]`` (colours
    cycle when there are more classes).
    """
    return np.stack(list(_iter_overlay(cine, labels, class_colours, alpha)))


def write_overlay_gif(
    cine: Any,
    labels: Any,
    path: str | os.PathLike,
    frame_time_ms: float | None,
    class_colours: Sequence[Sequence[int]] | None = None,
    alpha: float = 0.4,
    max_size: int | None = None,
    frame_step: int = 1,
) -> Path:
    """Write the coloured cine as a looping GIF; returns ``path``.

    Args:
        cine: intensities ``(C, H, W, T)`` (see :func:`overlay_frames` for the display mapping).
        labels: class indices ``(H, W, T)``; class 0 is not coloured.
        frame_time_ms: time between frames; the GIF delay is ``frame_time_ms * frame_step`` rounded to the format's
            10 ms and at least 20 ms (None: 33.3 ms, 30 frames/s).
        class_colours: RGB per class 1, 2, ... (default :data:`DEFAULT_CLASS_COLOURS`).
        alpha: colour opacity.
        max_size: shrink frames so the longer side is at most this many pixels (None keeps the size).
        frame_step: keep every ``frame_step``-th frame (long cines); playback speed is kept.

    GIF stores 256 colours per frame, so colours are approximate; Pillow merges consecutive identical frames into
    one longer frame. Written atomically.
    """
    delay = (frame_time_ms if frame_time_ms else 1000.0 / 30.0) * frame_step
    delay = max(_MIN_GIF_DELAY_MS, int(round(delay / 10.0)) * 10)
    images = []
    for frame in _iter_overlay(cine, labels, class_colours, alpha, frame_step):
        image = Image.fromarray(frame)
        height, width = frame.shape[:2]
        if max_size is not None and max(height, width) > max_size:
            scale = max_size / max(height, width)
            image = image.resize(
                (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS
            )
        images.append(image)

    def write(name: str) -> None:
        images[0].save(name, format="GIF", save_all=True, append_images=images[1:], duration=delay, loop=0)

    return atomic_write(path, write)

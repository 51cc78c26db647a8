"""What a user gives for a new cine: box prompts on frames, and labels on some frames (a partial label volume).

Partial label convention: a class-index volume ``(H, W, T)`` (or ``(1, H, W, T)``) on the cine's frame grid in
which every pixel of an unlabelled frame holds :data:`UNLABELLED` (255), or any label volume together with the list of
labelled frame indices (then the other frames are ignored whatever they hold). Labelled frames hold class indices
``0 .. K-1``; a labelled frame without foreground is a valid negative example. Errors are :class:`PromptError`
(a ``ValueError``) naming the input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "UNLABELLED",
    "BoxPrompt",
    "PromptError",
    "box_of_mask",
    "check_boxes",
    "labelled_frames",
    "parse_boxes",
    "partial_label",
]

#: The value that marks every pixel of an unlabelled frame in a partial label volume.
UNLABELLED = 255


class PromptError(ValueError):
    """A box or a partial label that cannot be used, with the input it came from named."""


@dataclass(frozen=True)
class BoxPrompt:
    """A box ``(x0, y0, x1, y1)`` in pixels of the original frame (x = column, inclusive corners) on ``frame``
    (0-based), for class ``label`` (1 = the first foreground class)."""

    frame: int
    box: tuple[float, float, float, float]
    label: int = 1


def parse_boxes(boxes: Any, source: str = "boxes") -> list[BoxPrompt]:
    """Box prompts from ``[frame, x0, y0, x1, y1]`` or ``[frame, x0, y0, x1, y1, label]`` rows, dicts with ``frame``,
    ``box`` (and ``label``), :class:`BoxPrompt` objects, or a JSON string of any of these."""
    if boxes is None:
        return []
    if isinstance(boxes, str):
        try:
            boxes = json.loads(boxes)
        except json.JSONDecodeError as err:
            raise PromptError(f"{source}: not JSON ({err.msg}); give [[frame, x0, y0, x1, y1], ...]") from None
    if isinstance(boxes, (BoxPrompt, dict)) or (
        isinstance(boxes, (list, tuple)) and boxes and isinstance(boxes[0], (int, float))
    ):
        boxes = [boxes]
    prompts = []
    for i, item in enumerate(boxes):
        try:
            if isinstance(item, BoxPrompt):
                prompts.append(item)
                continue
            if isinstance(item, dict):
                frame, box, label = item["frame"], item["box"], item.get("label", 1)
            else:
                values = list(item)
                if len(values) not in (5, 6):
                    raise ValueError(f"{len(values)} values")
                frame, box, label = values[0], values[1:5], values[5] if len(values) == 6 else 1
            coordinates = tuple(float(v) for v in box)
            if len(coordinates) != 4 or float(frame) != int(frame) or float(label) != int(label):
                raise ValueError("a frame index, four coordinates and an integer label")
            prompts.append(BoxPrompt(int(frame), coordinates, int(label)))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as err:
            raise PromptError(f"{source}: box {i} {item!r} is not [frame, x0, y0, x1, y1(, label)] ({err})") from None
    return prompts


def check_boxes(prompts: Sequence[BoxPrompt], shape: tuple[int, int, int], source: str = "boxes") -> None:
    """Raise :class:`PromptError` unless each box lies on a frame of a cine of ``(H, W, T)`` ``shape``, inside it,
    with positive width and height, for a foreground class."""
    height, width, frames = shape
    for i, p in enumerate(prompts):
        x0, y0, x1, y1 = p.box
        where = f"{source}: box {i} {list(p.box)} on frame {p.frame}"
        if not 0 <= p.frame < frames:
            raise PromptError(f"{where}: frame index out of range; the cine has frames 0..{frames - 1}")
        if not all(np.isfinite(p.box)):
            raise PromptError(f"{where}: coordinates must be finite numbers")
        if x1 <= x0 or y1 <= y0:
            raise PromptError(f"{where}: needs x0 < x1 and y0 < y1 (x is the column, y the row)")
        if x0 < 0 or y0 < 0 or x1 > width - 1 or y1 > height - 1:
            raise PromptError(f"{where}: outside the {width} x {height} (width x height) frame")
        if p.label < 1 or p.label >= UNLABELLED:
            raise PromptError(f"{where}: label {p.label} must be a foreground class index 1..{UNLABELLED - 1}")


def box_of_mask(mask: np.ndarray | torch.Tensor, margin: float = 0.0) -> tuple[float, float, float, float] | None:
    """The ``(x0, y0, x1, y1)`` box around the nonzero pixels of an ``(H, W)`` mask, grown by ``margin`` pixels and
    clipped to the frame; None for an empty mask."""
    mask = np.asarray(mask) != 0
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    height, width = mask.shape
    return (
        max(0.0, cols[0] - margin),
        max(0.0, rows[0] - margin),
        min(width - 1.0, cols[-1] + margin),
        min(height - 1.0, rows[-1] + margin),
    )


def labelled_frames(label: np.ndarray, frames: Sequence[int] | None = None, source: str = "label") -> list[int]:
    """Indices of the labelled frames of an ``(H, W, T)`` partial label: ``frames`` when given (checked against
    ``T``), else every frame not entirely :data:`UNLABELLED`."""
    count = label.shape[-1]
    if frames is not None:
        chosen = sorted({int(f) for f in frames})
        bad = [f for f in chosen if not 0 <= f < count]
        if bad:
            raise PromptError(
                f"{source}: labelled frame indices {bad} out of range; the label has frames 0..{count - 1}"
            )
        return chosen
    return [t for t in range(count) if not (label[..., t] == UNLABELLED).all()]


def partial_label(
    label: np.ndarray | torch.Tensor,
    shape: tuple[int, int, int],
    frames: Sequence[int] | None = None,
    num_classes: int | None = None,
    source: str = "label",
) -> tuple[np.ndarray, list[int]]:
    """Check a partial label against a cine of ``(H, W, T)`` ``shape``; returns the ``(H, W, T)`` uint8 volume with
    unlabelled frames set to :data:`UNLABELLED` and the labelled frame indices.

    Raises :class:`PromptError` for a wrong shape or frame count, no labelled frame, labelled frames without any
    foreground, a labelled frame that is foreground everywhere, :data:`UNLABELLED` pixels inside a labelled frame,
    or class indices ``>= num_classes``."""
    array = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise PromptError(f"{source}: a partial label is (H, W, T) or (1, H, W, T), got shape {array.shape}")
    if array.shape[:2] != tuple(shape[:2]):
        raise PromptError(
            f"{source}: frames of (H, W) {array.shape[:2]} differ from the cine's {tuple(shape[:2])}; "
            "the label must be on the cine's frame grid"
        )
    if array.shape[2] != shape[2]:
        raise PromptError(f"{source}: {array.shape[2]} label frames for a cine of {shape[2]} frames")
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise PromptError(f"{source}: holds non-integer values; a partial label holds class indices and {UNLABELLED}")
    if array.min() < 0 or array.max() > UNLABELLED:
        raise PromptError(f"{source}: values outside 0..{UNLABELLED}")
    array = array.astype(np.uint8)
    chosen = labelled_frames(array, frames, source)
    if not chosen:
        raise PromptError(
            f"{source}: no labelled frame (every frame is {UNLABELLED} = unlabelled); label at least one frame"
        )
    out = np.full_like(array, UNLABELLED)
    out[..., chosen] = array[..., chosen]
    kept = out[..., chosen]
    holes = [f for f in chosen if (array[..., f] == UNLABELLED).any()]
    if holes:
        raise PromptError(
            f"{source}: labelled frames {holes} hold {UNLABELLED} (unlabelled) pixels; "
            "label a frame whole or not at all"
        )
    if num_classes is not None and kept.max() >= num_classes:
        raise PromptError(f"{source}: class index {int(kept.max())} for {num_classes} classes (0..{num_classes - 1})")
    if not (kept > 0).any():
        raise PromptError(f"{source}: the labelled frames {chosen} hold no foreground; nothing to learn")
    full = [f for f in chosen if (array[..., f] > 0).all()]
    if full:
        raise PromptError(f"{source}: labelled frames {full} are foreground everywhere; a label needs background too")
    return out, chosen

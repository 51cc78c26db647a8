"""The annotation loop behind MONAI Label's interactive model: prompts and saved corrections in, a whole cine out.

:class:`InteractiveCineModel` is what the MONAI Label app's interactive task calls (``bundle/configs/
interactive.json``): each request carries a cine, box prompts and/or foreground clicks, and the frames a user has
labelled so far (the label saved in MONAI Label's datastore, in the partial-label convention of
:mod:`vivim_monai.fewshot.prompts`). It answers with :func:`~vivim_monai.fewshot.segment.segment_with_prompts`
(``"auto"``) started from the closest weights: the interactive model's own checkpoint once the train task has made
one, else ``start``. The LiteMedSAM embeddings of the last cine are kept, so a correction round of the same cine does
not run the image encoder again.

Clicks follow DeepEdit's request fields: ``foreground`` points ``[row, column, frame]`` (index order of the
``H x W x T`` volume). LiteMedSAM was trained with box prompts only, so the clicks of one frame are read as the
structure's extreme points (Papadopoulos et al., "Extreme clicking for efficient object annotation", ICCV 2017): their
bounding box is the box prompt of that frame; a frame needs two clicks at least. Background clicks are refused.

:func:`train_on_labelled_cines` is the train task: the per-frame network fine-tuned on every labelled frame of every
(sparsely) labelled cine, written atomically, so an interrupted training leaves the previous weights serving.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vivim_monai.fewshot.adapt import AdaptConfig, FewShotAdapter
from vivim_monai.fewshot.prompts import BoxPrompt, PromptError, parse_boxes, partial_label
from vivim_monai.fewshot.segment import PromptedResult, segment_with_prompts
from vivim_monai.fewshot.tracking import FrameEmbeddings
from vivim_monai.networks import LiteMedSAM

__all__ = ["InteractiveCineModel", "box_from_roi", "boxes_from_clicks", "train_on_labelled_cines"]


def boxes_from_clicks(points: Any, source: str = "foreground") -> list[BoxPrompt]:
    """Foreground clicks ``[[row, column, frame], ...]`` -> one box per clicked frame, the bounding box of its clicks
    (extreme clicking, module notes); :class:`PromptError` naming ``source`` for malformed points or a lone click."""
    if points is None:
        return []
    per_frame: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for i, point in enumerate(points):
        try:
            row, column, frame = (float(v) for v in point)
            if frame != int(frame) or not np.isfinite([row, column]).all():
                raise ValueError("an integer frame and finite coordinates")
        except (TypeError, ValueError) as err:
            raise PromptError(f"{source}: point {i} {point!r} is not [row, column, frame] ({err})") from None
        per_frame[int(frame)].append((row, column))
    boxes = []
    for frame, clicks in sorted(per_frame.items()):
        if len(clicks) < 2:
            raise PromptError(
                f"{source}: one click on frame {frame}; click the structure's extreme points (two or more on a frame: "
                "their bounding box prompts the frame) or send a box"
            )
        rows, columns = zip(*clicks)
        if max(rows) == min(rows) or max(columns) == min(columns):
            raise PromptError(f"{source}: the clicks on frame {frame} lie on one line; they span no box")
        boxes.append(BoxPrompt(frame, (min(columns), min(rows), max(columns), max(rows))))
    return boxes


def box_from_roi(roi: Any, frame: Any = None, source: str = "roi") -> list[BoxPrompt]:
    """MONAI Label SAM2's ``roi`` ``[i0, j0, i1, j1, k0, k1]`` (rows i, columns j, frames k; or ``[i0, j0, i1, j1]``
    with ``frame``, the request's ``slice``) -> a box on ``frame``, else on the middle of ``k0..k1`` (SAM2's 2D rule).
    Corners are sorted per axis: clients send them in either order."""
    try:
        values = [float(v) for v in roi]
        if len(values) not in (4, 6) or not np.isfinite(values).all():
            raise ValueError(f"{len(values)} values")
    except (TypeError, ValueError) as err:
        raise PromptError(
            f"{source} {roi!r}: give [i0, j0, i1, j1, k0, k1] (rows i, columns j, frames k) ({err})"
        ) from None
    rows, columns = sorted(values[0:3:2]), sorted(values[1:4:2])
    if frame is None:
        if len(values) == 4:
            raise PromptError(f"{source} {roi!r} names no frame: give [i0, j0, i1, j1, k0, k1] or a slice")
        first, last = sorted(values[4:6])
        frame = first + (last - first) // 2
    if float(frame) != int(float(frame)):
        raise PromptError(f"{source}: frame (slice) {frame!r} is not an integer")
    return [BoxPrompt(int(float(frame)), (columns[0], rows[0], columns[1], rows[1]))]


class InteractiveCineModel:
    """Box/click prompts and saved frame labels -> the whole cine (module notes).

    Args:
        checkpoint: where the train task writes this model's weights; used as the start when it exists.
        start: the start otherwise (``"imagenet"``, a released model's name, a checkpoint path).
        class_names: background first; their count is the number of classes.
        recipe: :class:`AdaptConfig` fields of the adaptation.
        bundle: the bundle folder holding released models.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        start: str = "imagenet",
        class_names: Sequence[str] = ("background", "structure"),
        recipe: dict[str, Any] | None = None,
        bundle: str | os.PathLike | None = None,
        medsam: LiteMedSAM | None = None,
    ) -> None:
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.start, self.class_names, self.bundle = start, list(class_names), bundle
        self.config = AdaptConfig(**(recipe or {}))
        self._medsam = medsam
        self._embeddings: tuple[str, FrameEmbeddings] | None = None

    @property
    def medsam(self) -> LiteMedSAM:
        if self._medsam is None:
            self._medsam = LiteMedSAM().eval()
        return self._medsam

    def start_weights(self) -> str:
        """The trained checkpoint when the train task has written one, else ``start``."""
        if self.checkpoint is not None and self.checkpoint.is_file():
            return str(self.checkpoint)
        return self.start

    def embeddings(self, cine: torch.Tensor) -> FrameEmbeddings:
        """The cine's LiteMedSAM embeddings, reused when the same pixels come again (only the last cine is kept)."""
        key = hashlib.sha256(np.ascontiguousarray(cine.numpy()).tobytes()).hexdigest()
        if self._embeddings is None or self._embeddings[0] != key:
            self._embeddings = (key, FrameEmbeddings(self.medsam, cine))
        return self._embeddings[1]

    def segment(
        self,
        cine: torch.Tensor,
        boxes: Any = None,
        foreground: Any = None,
        label: np.ndarray | None = None,
        labelled_frames: Sequence[int] | None = None,
        source: str = "cine",
        recipe: dict[str, Any] | None = None,
    ) -> PromptedResult:
        """Every frame of a ``(C, H, W, T)`` cine from boxes, extreme clicks and/or a partial label; ``recipe``
        overrides :class:`AdaptConfig` fields for this request (e.g. fewer ``steps`` for a quicker, rougher answer)."""
        prompts = parse_boxes(boxes, f"{source} boxes") + boxes_from_clicks(foreground, f"{source} foreground")
        config = self.config
        if recipe:
            known = sorted(asdict(config))
            if not isinstance(recipe, dict) or set(recipe) - set(known):
                raise PromptError(f"{source} recipe {recipe!r}: give a dict of these fields only: {known}")
            config = replace(config, **recipe)
        return segment_with_prompts(
            cine,
            boxes=prompts,
            label=label,
            labelled_frames=labelled_frames,
            method="auto",
            num_classes=len(self.class_names),
            start=self.start_weights(),
            config=config,
            bundle=self.bundle,
            source=source,
            embeddings=self.embeddings(cine) if prompts or label is not None else None,
        )


def train_on_labelled_cines(
    cines: Sequence[tuple[torch.Tensor, np.ndarray, str]],
    output: str | os.PathLike,
    start: str = "imagenet",
    class_names: Sequence[str] = ("background", "structure"),
    recipe: dict[str, Any] | None = None,
    bundle: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Fine-tune the per-frame network on every labelled frame of ``(cine, partial label, name)`` triples and write
    its weights to ``output`` atomically; returns a summary (cines, frames, seconds, final loss)."""
    began = time.perf_counter()
    config = AdaptConfig(**(recipe or {}))
    config = replace(config, temporal_steps=0)  # the served model is the per-frame network
    checked = []
    for cine, label, name in cines:
        shape = tuple(int(s) for s in cine.shape[1:])
        partial, frames = partial_label(label, shape, None, len(class_names), source=name)  # type: ignore[arg-type]
        checked.append((cine, partial, frames))
    if not checked:
        raise PromptError("no labelled cine to train on: save a label of at least one frame first")
    adapter = FewShotAdapter(len(class_names), start, config, bundle)
    losses = adapter.fit_many(checked)
    adapter.save(output)
    return {
        "cines": len(checked),
        "frames": sum(len(frames) for _, _, frames in checked),
        "seconds": time.perf_counter() - began,
        "final_loss": losses[-1],
        "start": adapter.start,
        "output": str(output),
    }

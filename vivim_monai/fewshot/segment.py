"""One cine plus box prompts and/or a partial label -> every frame segmented (class indices, per-frame status).

Methods (``method``):

- ``"track"``: :func:`~vivim_monai.fewshot.tracking.track_boxes` (boxes only); frames past a lost track stay
  background and are listed in the report.
- ``"adapt"``: :class:`~vivim_monai.fewshot.adapt.FewShotAdapter` on the labelled frames; a box adds its frame,
  labelled with LiteMedSAM's mask for the box (so one box alone is "box -> adaptation"). With
  ``config.temporal_steps`` > 0 the adapted weights then start a ``TemporalFlexibleUNet``
  (:class:`~vivim_monai.fewshot.temporal.TemporalFewShotAdapter`), for every method that adapts.
- ``"track+adapt"``: track the boxes (and the boxes of the labelled frames' masks), then adapt on the boxed and
  labelled frames plus up to ``pseudo_frames`` tracked frames spread over the cine (the tracker's masks as
  pseudo-labels: the cine's unlabelled frames through time), and segment every frame with the adapted network,
  which also covers the frames where tracking was lost.
- ``"auto"``: the boxes and the labelled frames are tracked first, and the tracker's masks are used as pseudo-labels
  (``"track+adapt"``) only when the tracks reach :data:`TRUST_TRACK_REACH` of the frames, else ``"adapt"`` on the
  boxed frames' LiteMedSAM masks and the labels alone (model card, *Your own cine*).

The bundle workflow that writes the outputs is :class:`~vivim_monai.fewshot.workflow.PromptedCineWorkflow`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from vivim_monai.fewshot.adapt import AdaptConfig, FewShotAdapter
from vivim_monai.fewshot.prompts import (
    UNLABELLED,
    BoxPrompt,
    PromptError,
    box_of_mask,
    check_boxes,
    parse_boxes,
    partial_label,
)
from vivim_monai.fewshot.temporal import TemporalFewShotAdapter
from vivim_monai.fewshot.tracking import DriftLimits, FrameEmbeddings, track_boxes
from vivim_monai.networks import LiteMedSAM

__all__ = [
    "METHODS",
    "PromptedResult",
    "label_boxes",
    "segment_with_prompts",
    "spread_frames",
]

METHODS = ("auto", "track", "adapt", "track+adapt")
#: ``"auto"`` learns from the tracker's masks only when the tracks from the boxes and labelled frames reach at least
#: this share of the frames without a stop (model card, *Your own cine*: on the developer cines the tracks cross the
#: whole dense VTUS video, where its pseudo-labels add +0.31 Dice at k = 1 and +0.23 from one box, and stop on 20-95 %
#: of the frames of every sparse carotid acquisition, where they cost Dice).
TRUST_TRACK_REACH = 0.9


@dataclass
class PromptedResult:
    """Class indices ``labels`` ``(H, W, T)``, per-frame ``status`` (``labelled`` / ``prompted`` / ``tracked`` /
    ``lost`` / ``segmented``), the frames the network trained on, what happened, and seconds per phase."""

    labels: np.ndarray
    status: list[str]
    method: str
    trained_frames: list[int] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    start: str | None = None
    adapter: FewShotAdapter | None = None
    lost: list[int] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        counts = dict(Counter(self.status))
        return {
            "method": self.method,
            "frames": len(self.status),
            "status_counts": counts,
            "status": self.status,
            "trained_frames": self.trained_frames,
            "events": self.events,
            "seconds": {k: round(v, 2) for k, v in self.seconds.items()},
            "start_weights": self.start,
            "track_lost_frames": self.lost,
        }


def spread_frames(candidates: Sequence[int], count: int) -> list[int]:
    """Up to ``count`` of the sorted ``candidates``, evenly spread (middles of equal shares)."""
    candidates = sorted(candidates)
    if len(candidates) <= count:
        return candidates
    return sorted({candidates[int((i + 0.5) * len(candidates) / count)] for i in range(count)})


def label_boxes(label: np.ndarray, frames: Sequence[int]) -> list[BoxPrompt]:
    """One box prompt per class present on each labelled frame of a partial label: the box around that class."""
    return [
        BoxPrompt(frame, box_of_mask(label[..., frame] == cls), int(cls))  # type: ignore[arg-type]
        for frame in frames
        for cls in np.unique(label[..., frame])
        if 0 < cls < UNLABELLED
    ]


def _box_labels(
    embeddings: FrameEmbeddings, prompts: Sequence[BoxPrompt], shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[int]]:
    """A partial label from LiteMedSAM's mask of each box on its frame (overlaps go to the higher logit)."""
    label = np.full(shape, UNLABELLED, np.uint8)
    best = np.full(shape, -np.inf, np.float32)
    frames = sorted({p.frame for p in prompts})
    label[..., frames] = 0
    for prompt in prompts:
        frame = prompt.frame
        logits, _ = embeddings.segment(frame, prompt.box)
        take = (logits > 0) & (logits > best[..., frame])
        label[..., frame][take] = prompt.label
        best[..., frame][take] = logits[take]
    return label, frames


def segment_with_prompts(
    cine: torch.Tensor,
    boxes: Any = None,
    label: np.ndarray | torch.Tensor | None = None,
    labelled_frames: Sequence[int] | None = None,
    method: str = "auto",
    num_classes: int | None = None,
    start: str = "imagenet",
    config: AdaptConfig = AdaptConfig(),
    pseudo_frames: int = 8,
    limits: DriftLimits = DriftLimits(),
    margin: float = 5.0,
    medsam: LiteMedSAM | None = None,
    bundle: str | os.PathLike | None = None,
    source: str = "cine",
    embeddings: FrameEmbeddings | None = None,
) -> PromptedResult:
    """Segment every frame of a ``(C, H, W, T)`` cine from boxes and/or a partial label (module notes).

    Args:
        boxes: box prompts (see :func:`~vivim_monai.fewshot.prompts.parse_boxes`).
        label: partial label ``(H, W, T)`` (unlabelled frames :data:`UNLABELLED`, or listed in ``labelled_frames``).
        num_classes: classes including background (default: the largest class given + 1, at least 2).
        start: the adaptation's starting weights (``"imagenet"``, a released model's name, a checkpoint path).
        pseudo_frames: tracked frames used as pseudo-labels by ``"track+adapt"``.
        source: names the cine in errors.
        embeddings: LiteMedSAM embeddings of this cine's frames from an earlier call (reused, not recomputed).
    """
    if method not in METHODS:
        raise PromptError(f"method {method!r}: choose one of {METHODS}")
    shape = tuple(int(s) for s in cine.shape[1:])
    prompts = parse_boxes(boxes, f"{source} boxes")
    check_boxes(prompts, shape, f"{source} boxes")  # type: ignore[arg-type]
    partial, frames = None, []
    if label is not None:
        partial, frames = partial_label(label, shape, labelled_frames, source=f"{source} label")  # type: ignore
    elif labelled_frames is not None:
        raise PromptError(f"{source}: labelled frames given without a label volume")
    if not prompts and partial is None:
        raise PromptError(f"{source}: give at least one box or a label on at least one frame")
    given = [p.label for p in prompts] + ([int(partial[..., frames].max())] if partial is not None else [])
    classes = num_classes if num_classes is not None else max(2, max(given) + 1)
    if max(given) >= classes:
        raise PromptError(f"{source}: class {max(given)} given for {classes} classes")
    began = time.perf_counter()
    seconds: dict[str, float] = {}
    events: list[str] = []
    gated = method == "auto"
    method = "track+adapt" if method == "auto" else method
    from_labels: list[BoxPrompt] = []
    if method == "track+adapt" and partial is not None:  # the labelled frames prompt the tracker too
        from_labels = label_boxes(partial, frames)
        prompts = prompts + from_labels
    if method in ("track", "track+adapt") and not prompts:
        raise PromptError(f"{source}: method {method!r} needs a box prompt (or, for track+adapt, a label)")
    if embeddings is None and prompts:
        embeddings = FrameEmbeddings(medsam or LiteMedSAM().eval(), cine)
    status = ["segmented"] * shape[2]
    tracked, lost = None, []
    if method in ("track", "track+adapt"):
        tracked = track_boxes(cine, prompts, margin=margin, limits=limits, embeddings=embeddings)
        seconds["tracking"] = tracked.seconds["total"]
        seconds["tracking_encoder"] = tracked.seconds["encoder"]
        events += tracked.events
        lost = tracked.frames_with("lost")
        if method == "track":
            seconds["total"] = time.perf_counter() - began
            return PromptedResult(tracked.labels, tracked.status, method, [], events, seconds, lost=lost)
    if gated:  # the tracker's masks are worth learning from only where its tracks cross the whole cine
        reached = 1 - len(lost) / shape[2]
        trusted = reached >= TRUST_TRACK_REACH
        boxed = len(prompts) > len(from_labels)
        given = "boxed and labelled" if boxed and from_labels else ("boxed" if boxed else "labelled")
        events.append(
            f"auto: the tracks from the {given} frames reach {reached:.0%} of the frames "
            f"({'>=' if trusted else '<'} {TRUST_TRACK_REACH:.0%}): "
            + ("their masks join as pseudo-labels" if trusted else f"adaptation on the {given} frames alone")
        )
        if not trusted:
            method, tracked = "adapt", None
            prompts = [p for p in prompts if p not in from_labels]
    train = np.full(shape, UNLABELLED, np.uint8)  # type: ignore[arg-type]
    chosen: set[int] = set()
    if tracked is not None:
        good = tracked.frames_with("prompted", "tracked")
        boxed = {p.frame for p in prompts}
        pseudo = spread_frames([f for f in good if f not in boxed], max(0, pseudo_frames))
        for frame in sorted(boxed | set(pseudo)):
            train[..., frame] = tracked.labels[..., frame]
        chosen |= boxed | set(pseudo)
    elif prompts:
        box_started = time.perf_counter()
        boxed_label, boxed_frames = _box_labels(embeddings, prompts, shape)  # type: ignore[arg-type]
        train[..., boxed_frames] = boxed_label[..., boxed_frames]
        chosen |= set(boxed_frames)
        seconds["box_masks"] = time.perf_counter() - box_started
    if partial is not None:  # a user's label wins over a box mask on the same frame
        train[..., frames] = partial[..., frames]
        chosen |= set(frames)
    train, trained = partial_label(train, shape, sorted(chosen), classes, source=f"{source} training frames")
    network = TemporalFewShotAdapter if config.temporal_steps > 0 else FewShotAdapter
    adapter = network(classes, start, config, bundle)
    result = adapter.adapt(cine, train, trained)
    seconds.update({f"adapt_{k}": v for k, v in result.seconds.items()})
    seconds["total"] = time.perf_counter() - began
    for t in trained:
        status[t] = "labelled"
    return PromptedResult(result.labels, status, method, trained, events, seconds, adapter.start, adapter, lost)

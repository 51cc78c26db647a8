"""Box prompts through a cine with LiteMedSAM: segment the boxed frame, then propagate forward and backward.

Each next frame is prompted with the box of the previous frame's mask grown by ``margin`` pixels (the box-tracking
recipe measured in the issue; MedSAM2, Ma et al. arXiv 2504.03600, and EchoPilot, arXiv 2605.25944, propagate one
prompt through a video the same way with a memory bank we do not have). Every frame is embedded once by LiteMedSAM's
encoder and cached, so several prompts cost one encoder pass per frame. Drift control stops a track instead of
painting a wrong mask: a view that changes under the box between neighbouring frames (a probe moved between
sparse frames), a mask that vanishes, grows or shrinks more than :class:`DriftLimits` allow between
neighbouring frames, jumps away from the previous mask, or covers most of the frame ends the track there; the frames
past it are reported ``lost`` and left background. With several prompts of a class each prompt tracks the frames up
to its neighbouring prompts of that class (so every frame follows its nearest prompt); classes overlap by logit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from vivim_monai.fewshot.prompts import BoxPrompt, box_of_mask, check_boxes
from vivim_monai.networks import LiteMedSAM
from vivim_monai.networks.nets.lite_medsam import native_bf16

__all__ = ["DriftLimits", "FrameEmbeddings", "TrackResult", "track_boxes"]

#: Per-frame status of a tracked cine.
STATUSES = ("prompted", "tracked", "lost")


@dataclass(frozen=True)
class DriftLimits:
    """When a track stops. ``max_growth``: area ratio to the previous frame's mask above which (or below whose
    inverse, ``max_shrink``) the mask is taken as exploded (collapsed); ``min_overlap``: IoU with the previous mask
    below which it jumped; ``min_area``: pixels below which it vanished; ``max_fraction``: share of the frame above
    which it flooded; ``min_correlation``: grey-level correlation of the box's patch in two neighbouring frames below
    which the view jumped."""

    max_growth: float = 2.0
    max_shrink: float = 3.0
    min_overlap: float = 0.3
    min_area: int = 8
    max_fraction: float = 0.6
    min_correlation: float = 0.3

    def check_images(self, before: np.ndarray, after: np.ndarray) -> str | None:
        """The reason the image under the box changed too much between two frames to follow the mask (None when it
        did not): normalised cross-correlation of the two grey patches below ``min_correlation``. Mask checks cannot
        see a probe that moved between sparse frames (the structure leaves the box, and SAM segments whatever dark
        region is left there); the patch correlation can: on the developer carotid cines every pair of frames whose
        ground-truth masks barely overlap (IoU < 0.05) has a correlation below 0.4, most below 0.3, and the VTUS
        video never drops below 0.58."""
        a, b = before - before.mean(), after - after.mean()
        norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
        correlation = float((a * b).sum()) / norm if norm > 0 else 1.0
        if correlation < self.min_correlation:
            return f"image under the box changed (correlation {correlation:.2f} < {self.min_correlation:g})"
        return None

    def check(self, mask: np.ndarray, previous: np.ndarray | None) -> str | None:
        """The reason ``mask`` ends the track (None when it continues)."""
        area = int(mask.sum())
        if area < self.min_area:
            return f"mask vanished ({area} px < {self.min_area})"
        if area > self.max_fraction * mask.size:
            return f"mask floods {area / mask.size:.0%} of the frame (> {self.max_fraction:.0%})"
        if previous is None:
            return None
        before = int(previous.sum())
        if area > self.max_growth * before:
            return f"mask exploded ({before} -> {area} px, > x{self.max_growth:g})"
        if area * self.max_shrink < before:
            return f"mask collapsed ({before} -> {area} px, < 1/{self.max_shrink:g})"
        overlap = np.logical_and(mask, previous).sum() / max(1, np.logical_or(mask, previous).sum())
        if overlap < self.min_overlap:
            return f"mask jumped (IoU {overlap:.2f} with the previous frame's, < {self.min_overlap:g})"
        return None


class FrameEmbeddings:
    """LiteMedSAM embeddings of a cine's frames, computed on first use and kept (one encoder pass per frame).

    ``precision``: ``"fp32"``, ``"bf16"`` (encoder under bfloat16 autocast) or ``"auto"`` (bf16 where the CPU
    computes it natively, :func:`~vivim_monai.networks.nets.lite_medsam.native_bf16`; fp32 elsewhere and on GPU)."""

    def __init__(self, model: LiteMedSAM, cine: torch.Tensor, precision: str = "auto") -> None:
        if cine.ndim != 4:
            raise ValueError(f"a cine is (C, H, W, T), got shape {tuple(cine.shape)}")
        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
        self.model, self.cine = model, cine
        on_cpu = all(p.device.type == "cpu" for p in getattr(model, "parameters", lambda: [])())
        self.bf16 = precision == "bf16" or (precision == "auto" and on_cpu and native_bf16())
        self.size = (int(cine.shape[1]), int(cine.shape[2]))
        self._cache: dict[int, tuple[torch.Tensor, tuple[int, int]]] = {}
        self.encoder_seconds = 0.0

    def __len__(self) -> int:
        return int(self.cine.shape[-1])

    def patch(self, frame: int, box: Sequence[float]) -> np.ndarray:
        """The grey-level pixels of ``frame`` inside ``box`` (float64)."""
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        return self.cine[:3, y0 : y1 + 1, x0 : x1 + 1, frame].double().mean(0).numpy()

    def segment(self, frame: int, box: Sequence[float]) -> tuple[np.ndarray, float]:
        """Mask logits ``(H, W)`` for ``box`` on ``frame`` and the decoder's IoU estimate."""
        if frame not in self._cache:
            start = time.perf_counter()
            image = torch.as_tensor(self.cine[..., frame]).float()
            self._cache[frame] = self.model.embed(image[:3] if image.shape[0] > 3 else image, self.bf16)
            self.encoder_seconds += time.perf_counter() - start
        embedding, inner = self._cache[frame]
        logits, score = self.model.decode_box(embedding, inner, self.size, torch.tensor(box))
        return logits.numpy(), score


@dataclass
class TrackResult:
    """A tracked cine: class indices ``labels`` ``(H, W, T)`` (uint8), foreground ``logits`` ``(H, W, T)`` of the
    winning class, per-frame ``status`` (:data:`STATUSES`; ``lost``: some class's track stopped before the frame),
    the prompt each frame came from (-1: none), why tracks stopped (``events``) and the seconds spent."""

    labels: np.ndarray
    logits: np.ndarray
    status: list[str]
    source: list[int]
    events: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def frames_with(self, *statuses: str) -> list[int]:
        return [t for t, s in enumerate(self.status) if s in statuses]


def _track_one(
    embeddings: FrameEmbeddings,
    prompt: BoxPrompt,
    frames: Sequence[int],
    margin: float,
    limits: DriftLimits,
) -> tuple[dict[int, np.ndarray], str | None, int | None]:
    """Logits of ``prompt`` on its frame and along ``frames`` (ordered away from it) until drift; returns the logits
    per frame reached, the reason it stopped and the frame where it stopped."""
    logits, _ = embeddings.segment(prompt.frame, prompt.box)
    out = {prompt.frame: logits}
    reason = limits.check(logits > 0, None)
    if reason is not None:
        return {}, f"the prompted frame's {reason}", prompt.frame
    previous, before = logits > 0, prompt.frame
    for frame in frames:
        box = box_of_mask(previous, margin)
        reason = limits.check_images(embeddings.patch(before, box), embeddings.patch(frame, box))
        if reason is not None:
            return out, reason, frame
        logits, _ = embeddings.segment(frame, box)
        mask = logits > 0
        reason = limits.check(mask, previous)
        if reason is not None:
            return out, reason, frame
        out[frame], previous, before = logits, mask, frame
    return out, None, None


def track_boxes(
    cine: torch.Tensor,
    prompts: Sequence[BoxPrompt],
    model: LiteMedSAM | None = None,
    margin: float = 5.0,
    limits: DriftLimits = DriftLimits(),
    embeddings: FrameEmbeddings | None = None,
) -> TrackResult:
    """Segment a ``(C, H, W, T)`` cine from box prompts (see the module notes); boxes are checked first."""
    start = time.perf_counter()
    height, width, count = (int(s) for s in cine.shape[1:])
    check_boxes(prompts, (height, width, count))
    if not prompts:
        raise ValueError("track_boxes needs at least one box prompt")
    model = model if model is not None else LiteMedSAM().eval()
    embeddings = embeddings if embeddings is not None else FrameEmbeddings(model, cine)
    encoder_before = embeddings.encoder_seconds  # embeddings kept from an earlier call cost nothing now
    labels = np.zeros((height, width, count), np.uint8)
    best = np.full((height, width, count), -np.inf, np.float32)
    lost, prompted = [False] * count, [False] * count
    source = [-1] * count
    events: list[str] = []
    for label in sorted({p.label for p in prompts}):
        group = sorted((i for i, p in enumerate(prompts) if p.label == label), key=lambda i: prompts[i].frame)
        anchors = [prompts[i].frame for i in group]
        reached: dict[int, list[tuple[int, int, np.ndarray]]] = {}  # frame -> (distance, prompt, logits)
        for position, index in enumerate(group):
            prompt = prompts[index]
            # a prompt owns the frames up to the next prompt of its class in each direction
            lower = anchors[position - 1] if position > 0 else -1
            upper = anchors[position + 1] if position + 1 < len(anchors) else count
            for direction, frames in ((1, range(prompt.frame + 1, upper)), (-1, range(prompt.frame - 1, lower, -1))):
                got, reason, where = _track_one(embeddings, prompt, list(frames), margin, limits)
                for frame, logits in got.items():
                    reached.setdefault(frame, []).append((abs(frame - prompt.frame), index, logits))
                if reason is not None:
                    way = "forward" if direction > 0 else "backward"
                    events.append(
                        f"box {index} (class {label}, frame {prompt.frame}) {way}: stopped at frame {where}: {reason}"
                    )
                    if where == prompt.frame:
                        break
        for frame in range(count):
            if frame not in reached:
                lost[frame] = True
                continue
            _, index, logits = min(reached[frame], key=lambda item: item[0])
            take = (logits > 0) & (logits > best[..., frame])
            labels[..., frame][take] = label
            best[..., frame][take] = logits[take]
            prompted[frame] |= prompts[index].frame == frame
            source[frame] = index if source[frame] < 0 else source[frame]
    status = ["lost" if lost[t] else "prompted" if prompted[t] else "tracked" for t in range(count)]
    seconds = {"encoder": embeddings.encoder_seconds - encoder_before, "total": time.perf_counter() - start}
    logits = np.where(np.isfinite(best), best, -20.0).astype(np.float32)
    return TrackResult(labels, logits, status, source, events, seconds)

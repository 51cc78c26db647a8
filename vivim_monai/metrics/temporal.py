"""Temporal consistency of a segmented video: TC (Painchaud 2022) on class areas, and mask stability.

**TC (Painchaud 2022)** (Painchaud et al., "Echocardiography Segmentation With Enforced Temporal Consistency",
IEEE TMI 2022; definition as in vitalab/vital ``vital/metrics/evaluate/attribute.py``): per class, the area curve
a(t) (pixels) is min-max scaled with reference bounds, the second-order residual ``m_t = a_t - (a_{t-1} + a_{t+1})/2``
is taken on interior frames (0 at both ends, which are consistent by definition), and frame t is temporally
inconsistent when ``|m_t| > tau``. Bounds and tau come from ground-truth sequences (:func:`temporal_reference`):
bounds = min/max GT area, tau = the largest GT ``|m|``, so the reference GT is consistent by construction. Fit the
reference on a data set's GT (the paper's protocol); without one it is fitted on the video's own GT, whose fraction
is then 0. A class with a constant reference area (range 0) is scaled by 1 pixel instead. Fractions and mean ``|m|``
are over all T frames. Painchaud uses several cardiac shape attributes; the area is the class-agnostic one. The
metric needs dense, time-ordered frames.

**Mask stability**: IoU of each class mask between consecutive frames (NaN when both are empty), averaged over the
video, for prediction and GT; a prediction that flickers more than the anatomy moves is less stable than the GT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from vivim_monai.metrics.frames import frame_bincount, infer_num_classes, video_labels, video_pair
from vivim_monai.metrics.segmentation import frame_confusion, overlap_per_frame
from vivim_monai.metrics.summary import nanmean

__all__ = [
    "TemporalReference",
    "class_areas",
    "consecutive_iou",
    "tc_residual",
    "temporal_consistency",
    "temporal_reference",
]

_TOLERANCE = 1e-9  # |m| must exceed tau by more than rounding error to count


def class_areas(x: torch.Tensor | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Pixel count of every class in every frame of one video, ``(T, K)`` int64."""
    k = infer_num_classes(num_classes, x)
    return _areas(video_labels(x, k), k)


def _areas(labels: torch.Tensor, k: int) -> np.ndarray:
    return frame_bincount(labels, k).cpu().numpy()


def tc_residual(areas: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Second-order residual ``m_t`` ``(T, K)`` of area curves ``(T, K)`` min-max scaled with ``bounds`` ``(K, 2)``."""
    areas, bounds = np.asarray(areas, dtype=np.float64), np.asarray(bounds, dtype=np.float64)
    scaled = (areas - bounds[:, 0]) / np.maximum(bounds[:, 1] - bounds[:, 0], 1.0)
    residual = np.zeros_like(scaled)
    residual[1:-1] = scaled[1:-1] - (scaled[:-2] + scaled[2:]) / 2
    return residual


@dataclass(frozen=True)
class TemporalReference:
    """Per-class area ``bounds`` ``(K, 2)`` (min, max) and inconsistency ``thresholds`` ``(K,)`` (or one number)."""

    bounds: np.ndarray
    thresholds: np.ndarray


def temporal_reference(gt_areas: Sequence[np.ndarray]) -> TemporalReference:
    """Fit bounds (min/max GT area) and thresholds (largest GT ``|m|``) on GT area curves ``[(T_i, K), ...]``."""
    if not gt_areas:
        raise ValueError("temporal_reference needs at least one ground-truth area curve")
    pooled = np.concatenate([np.asarray(a, dtype=np.float64) for a in gt_areas], axis=0)
    bounds = np.stack([pooled.min(axis=0), pooled.max(axis=0)], axis=1)
    thresholds = np.max([np.abs(tc_residual(a, bounds)).max(axis=0) for a in gt_areas], axis=0)
    return TemporalReference(bounds=bounds, thresholds=thresholds)


def consecutive_iou(x: torch.Tensor | np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """IoU of each class between frames t and t+1 of one video, ``(T-1, K)`` (NaN where both are empty)."""
    k = infer_num_classes(num_classes, x)
    return _consecutive_iou(video_labels(x, k), k)


def _consecutive_iou(labels: torch.Tensor, k: int) -> np.ndarray:
    return overlap_per_frame(frame_confusion(labels[1:], labels[:-1], k), "jaccard").cpu().numpy()


def temporal_consistency(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int | None = None,
    reference: TemporalReference | None = None,
) -> dict[str, np.ndarray]:
    """TC (Painchaud 2022) and mask stability of one video (layouts as ``per_frame_metrics``).

    Returns, per class: ``{pred,gt}_residual`` and ``{pred,gt}_inconsistent`` ``(T, K)``;
    ``{pred,gt}_inconsistent_fraction``, ``{pred,gt}_mean_abs_residual``, ``{pred,gt}_stability`` (mean consecutive
    IoU), ``stability_gap`` (prediction minus GT) and the ``thresholds`` used, each ``(K,)``.
    """
    p, y, k = video_pair(pred, label, num_classes)
    reference = reference or temporal_reference([_areas(y, k)])
    out: dict[str, np.ndarray] = {"thresholds": np.asarray(reference.thresholds, dtype=np.float64)}
    for name, frames in (("pred", p), ("gt", y)):
        residual = tc_residual(_areas(frames, k), reference.bounds)
        inconsistent = np.abs(residual) > out["thresholds"] + _TOLERANCE
        out[f"{name}_residual"] = residual
        out[f"{name}_inconsistent"] = inconsistent
        out[f"{name}_inconsistent_fraction"] = inconsistent.mean(axis=0)
        out[f"{name}_mean_abs_residual"] = np.abs(residual).mean(axis=0)
        out[f"{name}_stability"] = nanmean(_consecutive_iou(frames, k), axis=0)
    out["stability_gap"] = out["pred_stability"] - out["gt_stability"]
    return out

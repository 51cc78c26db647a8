"""Per-frame, per-class overlap metrics, HD95 and the pixel confusion matrix of a segmented video.

Project rule (fixing the Vivim code's defects: 256-threshold averaging, Dice 0 for empty-empty frames): predictions
are argmax class maps; every frame and class is scored on its own; a ratio whose denominator is zero is NaN and the
NaNs are left out of later means (:mod:`vivim_monai.metrics.summary`). So:

* Dice (F1) and Jaccard (threat score) are NaN only when the class is absent from both prediction and ground truth
  (an empty prediction on a non-empty ground truth, or the reverse, scores 0);
* precision is NaN when the class is not predicted, recall when it is absent from the ground truth, specificity
  when it fills the frame;
* HD95 (MONAI's symmetric 95th-percentile Hausdorff distance, in mm when ``spacing`` is given) is NaN when the class
  is absent from both; when exactly one of them is empty, the distance is undefined (MONAI returns NaN, which a
  nan-mean would silently skip, rewarding misses) and is set to the frame diagonal, a bounded worst case.
  Background (class 0) is not scored for HD95 (NaN).

The ratios come from MONAI's ``compute_confusion_matrix_metric`` on per-frame (tp, fp, tn, fn) counts, which are read
off a per-frame K x K pixel confusion matrix (rows: ground truth, columns: prediction).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
from monai.metrics import compute_confusion_matrix_metric, compute_hausdorff_distance

from vivim_monai.metrics.frames import frame_bincount, index_dtype, video_pair

__all__ = [
    "OVERLAP_METRICS",
    "confusion_matrix",
    "frame_confusion",
    "hd95_per_frame",
    "normalise_confusion",
    "overlap_per_frame",
    "per_frame_metrics",
]

_HD95_FRAMES_PER_CALL = 16

# our name -> MONAI's compute_confusion_matrix_metric name
OVERLAP_METRICS = {
    "dice": "f1 score",
    "jaccard": "threat score",
    "precision": "precision",
    "recall": "recall",
    "specificity": "specificity",
}


def frame_confusion(pred: torch.Tensor, label: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Pixel confusion matrix of every frame, ``(N, K, K)`` int64, from index frames ``(N, H, W)``."""
    k = num_classes
    codes_type = index_dtype(k * k)
    codes = label.to(codes_type) * k + pred.to(codes_type)  # row = ground truth, column = prediction
    return frame_bincount(codes, k * k).view(-1, k, k)


def overlap_per_frame(frame_cm: torch.Tensor, metric: str) -> torch.Tensor:
    """One of :data:`OVERLAP_METRICS` per frame and class, ``(N, K)`` float64, from :func:`frame_confusion`."""
    if metric not in OVERLAP_METRICS:
        raise ValueError(f"metric must be one of {sorted(OVERLAP_METRICS)}, got {metric!r}")
    cm = frame_cm.double()
    tp = torch.diagonal(cm, dim1=-2, dim2=-1)
    fp = cm.sum(dim=-2) - tp  # predicted as the class, labelled otherwise
    fn = cm.sum(dim=-1) - tp
    tn = cm.sum(dim=(-2, -1))[:, None] - tp - fp - fn
    return compute_confusion_matrix_metric(OVERLAP_METRICS[metric], torch.stack([tp, fp, tn, fn], dim=-1))


def _spacing_pair(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    if spacing is None:
        return 1.0, 1.0
    values = [float(spacing)] * 2 if np.isscalar(spacing) else [float(s) for s in spacing]
    if len(values) != 2 or min(values) <= 0:
        raise ValueError(f"spacing must be a positive number or (row, col) pair, got {spacing}")
    return values[0], values[1]


def hd95_per_frame(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, spacing: float | Sequence[float] | None = None
) -> torch.Tensor:
    """HD95 per frame and class, ``(N, K)`` float64, from index frames ``(N, H, W)``; see the module notes."""
    rows, cols = _spacing_pair(spacing)
    diagonal = math.hypot(pred.shape[-2] * rows, pred.shape[-1] * cols)
    out = torch.full((pred.shape[0], num_classes), math.nan, dtype=torch.float64)
    for start in range(0, pred.shape[0], _HD95_FRAMES_PER_CALL):  # bounds the one-hot copies of long videos
        p, y = (
            torch.stack([x[start : start + _HD95_FRAMES_PER_CALL] == c for c in range(num_classes)], dim=1)
            for x in (pred, label)
        )  # (n, K, H, W) bool one-hot
        with warnings.catch_warnings():  # empty masks are handled below; MONAI warns about each
            warnings.filterwarnings("ignore", message=".*may result in nan/inf distance")
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy")
            hd = compute_hausdorff_distance(p, y, include_background=False, percentile=95, spacing=(rows, cols))
        in_pred, in_label = p[:, 1:].flatten(2).any(-1), y[:, 1:].flatten(2).any(-1)
        hd = torch.where(in_pred ^ in_label, diagonal, hd.double().cpu())
        out[start : start + len(hd), 1:] = torch.where(in_pred | in_label, hd, math.nan)
    return out


def per_frame_metrics(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    num_classes: int | None = None,
    spacing: float | Sequence[float] | None = None,
    include_hd95: bool = True,
) -> dict[str, np.ndarray]:
    """Dice, Jaccard, precision, recall, specificity (and HD95) of one video, each ``(T, K)`` float64.

    Args:
        pred, label: one video, ``(H, W, T)`` / ``(1, H, W, T)`` class indices or ``(K, H, W, T)`` one-hot.
        num_classes: K including background; inferred from a one-hot input when omitted.
        spacing: pixel spacing (row, col) in mm, or one number, for HD95 in mm; pixels when None.
        include_hd95: HD95 costs a distance transform per frame and class; skip it for quick evaluations.
    """
    p, y, k = video_pair(pred, label, num_classes)
    cm = frame_confusion(p, y, k)
    out = {name: overlap_per_frame(cm, name).cpu().numpy() for name in OVERLAP_METRICS}
    if include_hd95:
        out["hd95"] = hd95_per_frame(p.cpu(), y.cpu(), k, spacing).numpy()
    return out


def confusion_matrix(
    pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """Pixel confusion matrix ``(K, K)`` int64 of a video (rows: ground truth, columns: prediction)."""
    p, y, k = video_pair(pred, label, num_classes)
    return frame_confusion(p, y, k).sum(dim=0).cpu().numpy()


def normalise_confusion(cm: np.ndarray, by: str = "true") -> np.ndarray:
    """Confusion matrix normalised over ``by="true"`` (rows sum to 1: recall on the diagonal) or ``"pred"``
    (columns sum to 1: precision on the diagonal). A class with no pixels on that side gives a NaN row/column."""
    axis = {"true": 1, "pred": 0}.get(by)
    if axis is None:
        raise ValueError(f"by must be 'true' or 'pred', got {by!r}")
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, cm / totals, np.nan)

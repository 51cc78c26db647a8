"""Per-frame clip metric for MONAI evaluators: the validation monitor is the foreground mean Dice.

The Vivim fork's ``val/dice`` monitor fed class-index maps to a one-hot metric, which read the image height as the
class axis. Here every frame of every clip ``(B, C, H, W, T)`` (one-hot from ``AsDiscreted(argmax=True,
to_onehot=K)``, or indices with ``num_classes``) is one sample, scored per class exactly as ``per_frame_metrics``
does, so the monitor equals the offline evaluation pooled over frames.
"""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from vivim_monai.metrics.frames import frame_labels, infer_num_classes
from vivim_monai.metrics.segmentation import OVERLAP_METRICS, frame_confusion, overlap_per_frame

__all__ = ["ClipFrameMetric"]

_REDUCTIONS = ("mean", "mean_batch", "none")


class ClipFrameMetric(CumulativeIterationMetric):
    """One of ``OVERLAP_METRICS`` (default Dice) per frame and class of clips; buffers ``(frames, K)``.

    ``aggregate``: per class, the nan-mean over all buffered frames (a class absent from both prediction and label
    in a frame is NaN and skipped); then ``reduction="mean"`` gives the nan-mean over classes (background excluded
    unless ``include_background``), ``"mean_batch"`` the per-class vector and ``"none"`` the raw buffer. Frames of
    overlapping clips count once per clip.
    """

    def __init__(
        self,
        metric_name: str = "dice",
        num_classes: int | None = None,
        include_background: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if metric_name not in OVERLAP_METRICS:
            raise ValueError(f"metric_name must be one of {sorted(OVERLAP_METRICS)}, got {metric_name!r}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.metric_name = metric_name
        self.num_classes = num_classes
        self.include_background = include_background
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        k = infer_num_classes(self.num_classes, y_pred, y)
        pred, label = frame_labels(y_pred, k), frame_labels(y, k).to(y_pred.device)
        if pred.shape != label.shape:
            raise ValueError(f"prediction and label frames differ: {tuple(pred.shape)} vs {tuple(label.shape)}")
        return overlap_per_frame(frame_confusion(pred, label, k), self.metric_name)

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the buffer is empty: call the metric on some clips first")
        reduction = reduction or self.reduction
        if reduction == "none":
            return data
        per_class, _ = do_metric_reduction(data, MetricReduction.MEAN_BATCH)  # NaN frames left out per class
        per_class = per_class[0 if self.include_background else 1 :]
        return per_class if reduction == "mean_batch" else do_metric_reduction(per_class[None], MetricReduction.MEAN)[0]

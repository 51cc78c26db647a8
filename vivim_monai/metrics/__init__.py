"""Evaluation of segmented medical videos: per-frame, per-class scores, temporal consistency, speed, and handlers."""

from vivim_monai.metrics.clip import ClipFrameMetric
from vivim_monai.metrics.frames import frame_labels, infer_num_classes, video_labels, video_pair
from vivim_monai.metrics.segmentation import (
    OVERLAP_METRICS,
    confusion_matrix,
    frame_confusion,
    hd95_per_frame,
    normalise_confusion,
    overlap_per_frame,
    per_frame_metrics,
)
from vivim_monai.metrics.summary import foreground_mean, nanmean, summarise
from vivim_monai.metrics.temporal import (
    TemporalReference,
    class_areas,
    consecutive_iou,
    tc_residual,
    temporal_consistency,
    temporal_reference,
)
from vivim_monai.metrics.timing import DeviceTimer, synchronize, time_calls

__all__ = [
    "DeviceTimer",
    "time_calls",
    "synchronize",
    "frame_labels",
    "infer_num_classes",
    "video_labels",
    "video_pair",
    "ClipFrameMetric",
    "OVERLAP_METRICS",
    "confusion_matrix",
    "frame_confusion",
    "hd95_per_frame",
    "normalise_confusion",
    "overlap_per_frame",
    "per_frame_metrics",
    "foreground_mean",
    "nanmean",
    "summarise",
    "TemporalReference",
    "class_areas",
    "consecutive_iou",
    "tc_residual",
    "temporal_consistency",
    "temporal_reference",
]

"""Clip losses for Vivim: every frame (or the centre frame) of ``(B, K, H, W, T)`` logits vs class-index labels."""

from vivim_monai.losses.base import FrameLoss, class_probabilities, frames_to_batch, one_hot_labels, select_frames
from vivim_monai.losses.boundary import BoundaryLoss, SegmentationWithBoundaryLoss, sobel_edges
from vivim_monai.losses.inverseform import InverseFormLoss, InverseNet
from vivim_monai.losses.segmentation import (
    OVARIAN_FOCAL_ALPHA,
    ClassBalancedFocalLoss,
    FocalTverskyLoss,
    FrameDiceCELoss,
    StructureLoss,
)

__all__ = [
    "BoundaryLoss",
    "ClassBalancedFocalLoss",
    "FocalTverskyLoss",
    "FrameDiceCELoss",
    "FrameLoss",
    "InverseFormLoss",
    "InverseNet",
    "OVARIAN_FOCAL_ALPHA",
    "SegmentationWithBoundaryLoss",
    "StructureLoss",
    "class_probabilities",
    "frames_to_batch",
    "one_hot_labels",
    "select_frames",
    "sobel_edges",
]

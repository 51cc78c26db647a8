"""A new cine from one box or a few labelled frames: box tracking with LiteMedSAM, few-shot adaptation of the default
network, both combined (:func:`segment_with_prompts`), and the evaluation protocol of the model card."""

from vivim_monai.fewshot.adapt import AdaptConfig, AdaptResult, FewShotAdapter, cine_frames, released_start
from vivim_monai.fewshot.prompts import (
    UNLABELLED,
    BoxPrompt,
    PromptError,
    box_of_mask,
    check_boxes,
    labelled_frames,
    parse_boxes,
    partial_label,
)
from vivim_monai.fewshot.temporal import TemporalFewShotAdapter
from vivim_monai.fewshot.tracking import DriftLimits, FrameEmbeddings, TrackResult, track_boxes

__all__ = [
    "UNLABELLED",
    "AdaptConfig",
    "AdaptResult",
    "BoxPrompt",
    "DriftLimits",
    "FewShotAdapter",
    "FrameEmbeddings",
    "PromptError",
    "TemporalFewShotAdapter",
    "TrackResult",
    "box_of_mask",
    "check_boxes",
    "cine_frames",
    "labelled_frames",
    "parse_boxes",
    "partial_label",
    "released_start",
    "track_boxes",
]

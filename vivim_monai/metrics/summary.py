"""Aggregation of per-frame, per-class scores: nan-means, the foreground mean, per-video and pooled summaries.

NaN marks an undefined score (e.g. Dice of a class absent from both prediction and ground truth); it is skipped,
never counted as 0 or 1, and the number of frames that did count is reported next to every mean. The foreground
mean is the macro average over classes 1..K-1 (class 1 alone for binary tasks) of the per-class means.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["foreground_mean", "nanmean", "summarise"]


def nanmean(x: np.ndarray, axis: int | tuple[int, ...] | None = None) -> np.ndarray | float:
    """``np.nanmean`` that returns NaN for all-NaN or empty slices without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.asarray(x, dtype=np.float64), axis=axis)


def foreground_mean(per_class: np.ndarray) -> np.ndarray | float:
    """Nan-mean over the foreground classes (last axis, classes 1..K-1) of per-class scores ``(..., K)``."""
    return nanmean(np.asarray(per_class)[..., 1:], axis=-1)


def summarise(videos: Sequence[Mapping[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
    """Summaries of per-video ``{metric: (T, K)}`` dicts (e.g. from ``per_frame_metrics``), per metric:

    * ``per_video`` ``(V, K)``: nan-mean over each video's frames; ``per_video_foreground`` ``(V,)``;
    * ``by_video`` ``(K,)``: nan-mean of ``per_video`` over videos (each video weighs the same), and its
      ``by_video_foreground`` (float);
    * ``by_frame`` ``(K,)``: nan-mean over all frames of all videos pooled (long videos weigh more), and its
      ``by_frame_foreground`` (float);
    * ``valid_frames`` ``(K,)``: how many frames had a defined (non-NaN) score.

    A per-video ``(K,)`` value (e.g. from ``temporal_consistency``) counts as one frame.
    """
    if not videos:
        raise ValueError("summarise needs at least one video")
    out: dict[str, dict[str, Any]] = {}
    for name in videos[0]:
        per_frame = [np.atleast_2d(np.asarray(v[name], dtype=np.float64)) for v in videos]
        per_video = np.stack([nanmean(f, axis=0) for f in per_frame])
        frames = np.concatenate(per_frame, axis=0)
        by_video, by_frame = nanmean(per_video, axis=0), nanmean(frames, axis=0)
        out[name] = {
            "per_video": per_video,
            "per_video_foreground": foreground_mean(per_video),
            "by_video": by_video,
            "by_video_foreground": float(foreground_mean(by_video)),
            "by_frame": by_frame,
            "by_frame_foreground": float(foreground_mean(by_frame)),
            "valid_frames": np.sum(~np.isnan(frames), axis=0),
        }
    return out

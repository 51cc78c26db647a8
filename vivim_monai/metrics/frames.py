"""Clip layout for metrics: every 2-D frame of a clip is one sample.

Clips are channel-first with time last, as everywhere in the package: a batch ``(B, C, H, W, T)``, one video
``(C, H, W, T)`` or a bare index map ``(H, W, T)``. ``C == 1`` holds class indices; ``C == num_classes`` holds one-hot
masks (or per-class scores), reduced with argmax. The primary input is the one-hot form that MONAI's
``AsDiscreted(argmax=True, to_onehot=K)`` produces; index maps need ``num_classes``.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data import MetaTensor

from vivim_monai.utils import argmax_indices

__all__ = ["frame_bincount", "frame_labels", "index_dtype", "infer_num_classes", "video_labels", "video_pair"]


def infer_num_classes(num_classes: int | None, *clips: torch.Tensor | np.ndarray) -> int:
    """``num_classes``, or the channel count of the first multi-channel (one-hot) clip."""
    if num_classes is None:
        channels = [int(c.shape[-4]) for c in clips if c.ndim >= 4 and c.shape[-4] > 1]
        if not channels:
            raise ValueError("num_classes is required when every input holds class indices (one channel)")
        num_classes = channels[0]
    if int(num_classes) < 2:
        raise ValueError(f"num_classes must be >= 2 (background + at least one class), got {num_classes}")
    return int(num_classes)


def index_dtype(values: int) -> torch.dtype:
    """The smallest integer type holding ``0 .. values - 1``: ``uint8`` up to 256 values, else ``int64``.

    Full-resolution cines hold tens of millions of pixels; index maps in one byte make the layout copies and the
    counting below 8x lighter than ``int64``."""
    return torch.uint8 if values <= 256 else torch.int64


def frame_bincount(values: torch.Tensor, size: int) -> torch.Tensor:
    """Counts of ``0 .. size - 1`` in every frame of ``(N, ...)`` non-negative integers, ``(N, size)`` int64.

    One ``bincount`` per frame: on CPU this is ~30x faster than one ``bincount`` over ``int64`` codes offset by frame
    (the ``int64`` arithmetic over every pixel dominates)."""
    if values.shape[0] == 0:
        return torch.zeros((0, size), dtype=torch.int64, device=values.device)
    return torch.stack([torch.bincount(frame.reshape(-1), minlength=size) for frame in values])


def frame_labels(x: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """Class-index frames ``(N, H, W)`` of a clip (on the input's device), N = B*T in (clip, time) order, in
    :func:`index_dtype` of ``num_classes`` (``uint8`` up to 256 classes).

    Accepts ``(H, W, T)``, ``(C, H, W, T)`` or ``(B, C, H, W, T)`` with ``C`` 1 (indices) or ``num_classes``.
    """
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    if x.ndim == 3:
        x = x[None]
    if x.ndim == 4:
        x = x[None]
    if x.ndim != 5:
        raise ValueError(f"expected a clip (H, W, T), (C, H, W, T) or (B, C, H, W, T), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if channels == num_classes and channels > 1:
        labels = argmax_indices(x, dim=1)
    elif channels == 1:
        labels = torch.round(x[:, 0]) if x.is_floating_point() else x[:, 0]
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"class indices must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    else:
        raise ValueError(f"expected 1 (indices) or {num_classes} (one-hot) channels, got {channels}")
    labels = labels.to(index_dtype(num_classes))  # checked in range above, so the narrowing is exact
    return labels.permute(0, 3, 1, 2).reshape(-1, *labels.shape[1:3])  # (B, H, W, T) -> (B*T, H, W)


def video_labels(x: torch.Tensor | np.ndarray, num_classes: int) -> torch.Tensor:
    """:func:`frame_labels` of a single video (``B`` must be 1): ``(T, H, W)`` in time order."""
    if x.ndim == 5 and x.shape[0] != 1:
        raise ValueError(f"expected one video, got a batch of {x.shape[0]}")
    return frame_labels(x, num_classes)


def video_pair(
    pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray, num_classes: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Index frames ``(T, H, W)`` of one video's prediction and label, checked to match, and K."""
    k = infer_num_classes(num_classes, pred, label)
    p, y = video_labels(pred, k), video_labels(label, k)
    if p.shape != y.shape:
        raise ValueError(f"prediction and label frames differ: {tuple(p.shape)} vs {tuple(y.shape)}")
    return p, y.to(p.device), k

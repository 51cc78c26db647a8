"""What every clip loss shares: input checks, the frame choice (all or centre) and frames folded into the batch.

Vivim predicts every frame of a clip, ``(B, K, H, W, T)`` logits against ``(B, 1, H, W, T)`` class-index labels. The
losses here are per-image losses (as in PraNet, the public Vivim code and its ovarian fork, which all see frames as a
batch of ``B·T`` images), so a clip is folded into ``B·T`` (or ``B`` for the centre frame only) 2-D frames once, in
:class:`FrameLoss`, and each loss only implements :meth:`FrameLoss.frame_loss` on ``(N, K, H, W)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from monai.data import MetaTensor
from monai.networks.utils import one_hot
from torch import nn

__all__ = ["FRAME_CHOICES", "FrameLoss", "class_probabilities", "frames_to_batch", "one_hot_labels", "select_frames"]

FRAME_CHOICES = ("all", "center")
Frames = Literal["all", "center"]


def select_frames(x: torch.Tensor, frames: Frames) -> torch.Tensor:
    """All frames of ``(..., T)``, or only the centre frame ``T // 2`` (kept as a length-1 time axis).

    The centre frame is the public Vivim training target (``pred[nF//2::nF]``); every frame is the ovarian fork's.
    """
    if frames == "all":
        return x
    if frames == "center":
        centre = x.shape[-1] // 2
        return x[..., centre : centre + 1]
    raise ValueError(f"frames must be one of {FRAME_CHOICES}, got {frames!r}")


def frames_to_batch(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W, T)`` -> ``(B·T, C, H, W)``, frame ``t`` of clip ``b`` at row ``b·T + t``."""
    b, c, h, w, t = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(b * t, c, h, w)


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities ``(N, C, H, W)`` with ``C = max(K, 2)``: softmax for K > 1; ``(1 - σ, σ)`` for K = 1.

    Writing the binary case as two classes lets the per-class losses (focal, Tversky) treat both alike, background
    included, as the ovarian fork does.
    """
    if logits.shape[1] == 1:
        return torch.cat([torch.sigmoid(-logits), torch.sigmoid(logits)], dim=1)
    return torch.softmax(logits, dim=1)


def one_hot_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class-index labels ``(N, 1, ...)`` -> float one-hot ``(N, num_classes, ...)`` (MONAI's ``one_hot``)."""
    return one_hot(labels, num_classes=num_classes, dtype=torch.float32)


def _plain(x: torch.Tensor) -> torch.Tensor:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


class FrameLoss(nn.Module):
    """Base of the clip losses: checks shapes and labels, selects frames, folds time into the batch.

    Subclasses implement :meth:`frame_loss` on ``(N, K, H, W)`` logits and ``(N, 1, H, W)`` labels and return a
    scalar. ``edge_input = True`` marks losses whose input is a 1-channel boundary map rather than class scores, so
    labels are not checked against its channel count.

    Args:
        frames: ``"all"`` (every frame of the clip) or ``"center"`` (frame ``T // 2`` only, the paper's variant).
    """

    edge_input: bool = False

    def __init__(self, frames: Frames = "all") -> None:
        super().__init__()
        if frames not in FRAME_CHOICES:
            raise ValueError(f"frames must be one of {FRAME_CHOICES}, got {frames!r}")
        self.frames = frames

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, K, H, W, T)`` logits against ``(B, 1, H, W, T)`` class-index labels (a scalar)."""
        logits, labels = self.prepare(input, target)
        return self.frame_loss(logits, labels)

    def prepare(self, input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked, frame-selected ``(N, K, H, W)`` logits and float ``(N, 1, H, W)`` labels."""
        input, target = _plain(input), _plain(target)
        name = type(self).__name__
        what = "boundary logits (B, 1, H, W, T)" if self.edge_input else "logits (B, K, H, W, T)"
        if input.ndim != 5:
            raise ValueError(f"{name}: expected {what}, got shape {tuple(input.shape)}")
        if target.ndim != 5 or target.shape[1] != 1:
            raise ValueError(f"{name}: expected class-index labels (B, 1, H, W, T), got shape {tuple(target.shape)}")
        if input.shape[0] != target.shape[0] or input.shape[2:] != target.shape[2:]:
            raise ValueError(
                f"{name}: input {tuple(input.shape)} and labels {tuple(target.shape)} differ in batch, H, W or T"
            )
        if self.edge_input and input.shape[1] != 1:
            raise ValueError(f"{name}: expected {what} with 1 channel, got {input.shape[1]} channels")
        self._check_label_values(target, None if self.edge_input else max(input.shape[1], 2), name)
        logits = frames_to_batch(select_frames(input, self.frames))
        labels = frames_to_batch(select_frames(target, self.frames)).to(logits.dtype)
        return logits, labels

    @staticmethod
    def _check_label_values(target: torch.Tensor, num_classes: int | None, name: str) -> None:
        if target.is_floating_point() and not torch.equal(target, target.round()):
            raise ValueError(f"{name}: labels must be class indices (integers); got non-integer values")
        low, high = (int(v) for v in target.aminmax())
        if low < 0 or (num_classes is not None and high >= num_classes):
            classes = "any class index >= 0" if num_classes is None else f"classes 0..{num_classes - 1}"
            hint = "" if num_classes is None else " (K = 1 means binary labels 0/1; K > 1 means K classes)"
            raise ValueError(f"{name}: labels hold values {low}..{high}, but the input allows {classes}{hint}")

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of ``(N, K, H, W)`` logits against ``(N, 1, H, W)`` float class-index labels."""
        raise NotImplementedError

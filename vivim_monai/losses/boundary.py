"""Boundary supervision: Sobel edges of the label, the boundary head's BCE, and the segmentation + boundary sum.

Vivim (Yang et al., arXiv 2401.14168) adds a boundary head trained against Sobel edges of the ground-truth mask with
BCE, ``L = L_seg + 0.3·L_bce (+ 0.3·L_affine)``. The affine term is :class:`~vivim_monai.losses.InverseFormLoss`,
which needs a local InverseForm checkpoint; it is off unless given.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vivim_monai.losses.base import FrameLoss, Frames

__all__ = ["BoundaryLoss", "SegmentationWithBoundaryLoss", "sobel_edges"]


def sobel_edges(labels: torch.Tensor) -> torch.Tensor:
    """Binary edges ``(N, 1, H, W)`` of class-index labels ``(N, 1, H, W)``: Sobel magnitude > 0 of any class mask.

    Each foreground class's indicator is filtered with the 3×3 Sobel kernels (replicate padding, so the image border
    is no edge); a pixel is an edge when any gradient is non-zero, i.e. on both sides of every class border,
    including borders between two foreground classes. Per-class indicators avoid the cancellations that Sobel on
    the raw index map allows where three classes meet, and make the result independent of class numbering (the
    background's gradient is minus the sum of the others', so it adds nothing).
    """
    num_classes = int(labels.max()) + 1
    if num_classes < 2:
        return torch.zeros_like(labels, dtype=torch.float32)
    classes = torch.arange(1, num_classes, device=labels.device, dtype=labels.dtype).view(1, -1, 1, 1)
    masks = (labels == classes).to(torch.float32)  # (N, C - 1, H, W)
    n, c, h, w = masks.shape
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=labels.device)
    kernels = torch.stack([gx, gx.T]).unsqueeze(1)  # (2, 1, 3, 3)
    padded = F.pad(masks.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels).reshape(n, c * 2, h, w)
    return (gradients != 0).any(dim=1, keepdim=True).to(torch.float32)


class BoundaryLoss(FrameLoss):
    """BCE of the boundary head's logits ``(B, 1, H, W, T)`` against Sobel edges of the labels ``(B, 1, H, W, T)``.

    Edges cover a few per cent of the pixels, so plain BCE is won by predicting "no edge" everywhere. With
    ``pos_weight="auto"`` edge pixels are weighted by ``#non-edge / #edge`` of the (frame-selected) batch, so both
    sides count equally (the public Vivim/InverseForm ``bce2d`` uses the same ratio, scaled by ``#edge / #all``).

    Args:
        pos_weight: ``"auto"`` (balanced per batch), a fixed weight of edge pixels, or None (plain BCE).
        frames: ``"all"`` or ``"center"``.
    """

    edge_input = True

    def __init__(self, pos_weight: float | Literal["auto"] | None = "auto", frames: Frames = "all") -> None:
        super().__init__(frames)
        if isinstance(pos_weight, str) and pos_weight != "auto":
            raise ValueError(f"pos_weight must be 'auto', a number or None, got {pos_weight!r}")
        self.pos_weight = pos_weight

    def frame_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        edges = sobel_edges(labels).to(logits)
        if self.pos_weight == "auto":
            positives = edges.sum()
            pos_weight = torch.where(positives > 0, (edges.numel() - positives) / positives.clamp_min(1), 1.0)
        elif self.pos_weight is None:
            pos_weight = None
        else:
            pos_weight = torch.as_tensor(float(self.pos_weight), device=logits.device, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, edges, pos_weight=pos_weight)


class SegmentationWithBoundaryLoss(nn.Module):
    """``seg_loss(seg) + boundary_weight·boundary_loss(edge) [+ affine_weight·affine_loss(edge)]``.

    For a network that returns ``(seg_logits, edge_logits)`` (``Vivim(..., edge_head=True)`` called with
    ``return_edge=True``); the input may also be a mapping with keys ``"seg"`` and ``"edge"``. A lone tensor is an
    error rather than a silent drop of the boundary term.

    Args:
        seg_loss: any clip loss ``(logits, labels) -> scalar``, e.g. :class:`~vivim_monai.losses.StructureLoss`.
        boundary_loss: default ``BoundaryLoss(frames=seg_loss.frames)`` (``"all"`` if it has none).
        boundary_weight: the paper's 0.3.
        affine_loss: optional boundary-map term, e.g. :class:`~vivim_monai.losses.InverseFormLoss` (off by default).
        affine_weight: the paper's 0.3.
    """

    def __init__(
        self,
        seg_loss: nn.Module,
        boundary_loss: nn.Module | None = None,
        boundary_weight: float = 0.3,
        affine_loss: nn.Module | None = None,
        affine_weight: float = 0.3,
    ) -> None:
        super().__init__()
        self.seg_loss = seg_loss
        if boundary_loss is None:
            boundary_loss = BoundaryLoss(frames=getattr(seg_loss, "frames", "all"))
        self.boundary_loss = boundary_loss
        self.boundary_weight = float(boundary_weight)
        self.affine_loss = affine_loss
        self.affine_weight = float(affine_weight)

    def forward(self, input: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(seg_logits, edge_logits)`` (or ``{"seg": ..., "edge": ...}``) against the class labels."""
        if isinstance(input, Mapping) and {"seg", "edge"} <= input.keys():
            seg_logits, edge_logits = input["seg"], input["edge"]
        elif isinstance(input, Sequence) and len(input) == 2:
            seg_logits, edge_logits = input
        else:
            raise ValueError(
                f"{type(self).__name__} needs (seg_logits, edge_logits) or {{'seg': ..., 'edge': ...}}, got "
                f"{type(input).__name__}; build the network with edge_head=True and call it with return_edge=True"
            )
        loss = self.seg_loss(seg_logits, target) + self.boundary_weight * self.boundary_loss(edge_logits, target)
        if self.affine_loss is not None:
            loss = loss + self.affine_weight * self.affine_loss(edge_logits, target)
        return loss

"""``EdgeInferer``: the training forward of a Vivim with a boundary head, ``(segmentation, edge)`` logits."""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import Inferer

__all__ = ["EdgeInferer"]


class EdgeInferer(Inferer):
    """Call ``network(inputs, return_edge=True)`` so a boundary loss sees the edge head (the paper's recipe).

    Use it as the trainer's inferer with ``SegmentationWithBoundaryLoss``; validation and inference keep the
    segmentation-only ``SlidingClipInferer``.
    """

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return network(inputs, *args, return_edge=True, **kwargs)

"""Loss names for configs: ``build_loss("structure", frames="center")``.

Bundle configs may equally instantiate the classes with ``_target_``; the names are a short-hand for scripts.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from vivim_monai.losses.boundary import BoundaryLoss
from vivim_monai.losses.inverseform import InverseFormLoss
from vivim_monai.losses.segmentation import ClassBalancedFocalLoss, FocalTverskyLoss, FrameDiceCELoss, StructureLoss

__all__ = ["LOSSES", "build_loss"]

LOSSES: dict[str, type[nn.Module]] = {
    "focal_tversky": FocalTverskyLoss,
    "focal": ClassBalancedFocalLoss,
    "structure": StructureLoss,
    "dice_ce": FrameDiceCELoss,
    "boundary": BoundaryLoss,
    "inverseform": InverseFormLoss,
}


def build_loss(name: str, **kwargs: Any) -> nn.Module:
    """The loss registered as ``name`` (see :data:`LOSSES`), built with ``kwargs``."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose one of {sorted(LOSSES)}")
    return LOSSES[name](**kwargs)

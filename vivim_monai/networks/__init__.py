"""Vivim and baselines; ``vivim_monai.networks.Vivim`` is the dotted path used in bundle configs."""

from vivim_monai.networks.nets import VIVIM_VARIANTS, FrameWise, PerFrameUNet, Vivim, remap_state_dict

__all__ = ["FrameWise", "PerFrameUNet", "VIVIM_VARIANTS", "Vivim", "remap_state_dict"]

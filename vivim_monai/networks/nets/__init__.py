"""Networks: Vivim and the per-frame baseline."""

from vivim_monai.networks.nets.per_frame import FrameWise, PerFrameUNet
from vivim_monai.networks.nets.vivim import VIVIM_VARIANTS, Vivim, remap_state_dict

__all__ = ["FrameWise", "PerFrameUNet", "VIVIM_VARIANTS", "Vivim", "remap_state_dict"]

"""Networks: Vivim, the per-frame baselines and EfficientNet-Lite (also a MONAI ``FlexibleUNet`` backbone)."""

from vivim_monai.networks.nets.efficientnet_lite import EFFICIENTNET_LITE, EfficientNetLite, EfficientNetLiteEncoder
from vivim_monai.networks.nets.lite_medsam import LiteMedSAM
from vivim_monai.networks.nets.medivista import MediViSTA
from vivim_monai.networks.nets.per_frame import FrameWise, PerFrameUNet
from vivim_monai.networks.nets.vivim import VIVIM_KEY_RULES, VIVIM_VARIANTS, Vivim, remap_state_dict

__all__ = [
    "EFFICIENTNET_LITE",
    "EfficientNetLite",
    "EfficientNetLiteEncoder",
    "FrameWise",
    "LiteMedSAM",
    "MediViSTA",
    "PerFrameUNet",
    "VIVIM_KEY_RULES",
    "VIVIM_VARIANTS",
    "Vivim",
    "remap_state_dict",
]

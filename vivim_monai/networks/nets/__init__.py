"""Networks: Vivim, the per-frame baselines, FlexibleUNet with ST-Mamba, EfficientNet-Lite (also a MONAI
``FlexibleUNet`` backbone), MediViSTA and
the text-prompted segmenters."""

from vivim_monai.networks.nets.biomedclip_seg import BiomedCLIPSeg
from vivim_monai.networks.nets.efficientnet_lite import EFFICIENTNET_LITE, EfficientNetLite, EfficientNetLiteEncoder
from vivim_monai.networks.nets.lite_medsam import LiteMedSAM
from vivim_monai.networks.nets.medivista import MediViSTA
from vivim_monai.networks.nets.per_frame import FrameWise, PerFrameUNet
from vivim_monai.networks.nets.temporal_unet import TemporalFlexibleUNet
from vivim_monai.networks.nets.text_prompted import TextPromptedLite
from vivim_monai.networks.nets.vivim import VIVIM_KEY_RULES, VIVIM_VARIANTS, Vivim, remap_state_dict

__all__ = [
    "BiomedCLIPSeg",
    "EFFICIENTNET_LITE",
    "EfficientNetLite",
    "EfficientNetLiteEncoder",
    "FrameWise",
    "LiteMedSAM",
    "MediViSTA",
    "PerFrameUNet",
    "TemporalFlexibleUNet",
    "TextPromptedLite",
    "VIVIM_KEY_RULES",
    "VIVIM_VARIANTS",
    "Vivim",
    "remap_state_dict",
]

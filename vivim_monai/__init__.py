"""vivim-monai: Vivim (Video Vision Mamba, arXiv 2401.14168) for medical video segmentation, as a MONAI bundle."""

__version__ = "0.10.0"

"""Inferers for cines of any length; ``vivim_monai.inferers.SlidingClipInferer`` is the bundle-config path."""

from vivim_monai.inferers.edge import EdgeInferer
from vivim_monai.inferers.flip import FlipEnsembleInferer, flip_combinations
from vivim_monai.inferers.sliding_clip import SlidingClipInferer, clip_windows

__all__ = ["EdgeInferer", "FlipEnsembleInferer", "SlidingClipInferer", "clip_windows", "flip_combinations"]

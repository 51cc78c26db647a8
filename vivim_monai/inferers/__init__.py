"""Inferers for cines of any length; ``vivim_monai.inferers.SlidingClipInferer`` is the bundle-config path."""

from vivim_monai.inferers.sliding_clip import SlidingClipInferer, clip_windows

__all__ = ["SlidingClipInferer", "clip_windows"]

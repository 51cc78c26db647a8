"""Validation key metric of the bundle: the foreground mean per-frame Dice of clips (see :class:`ClipFrameMetric`)."""

from __future__ import annotations

from typing import Callable

from monai.handlers import IgniteMetricHandler

from vivim_monai.metrics import ClipFrameMetric

__all__ = ["ClipMeanDice"]


class ClipMeanDice(IgniteMetricHandler):
    """Ignite handler of :class:`ClipFrameMetric`: the foreground mean per-frame Dice of clips, for key metrics.

    Bundle config: ``{"_target_": "vivim_monai.handlers.ClipMeanDice", "num_classes": 3,
    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])"}``. ``metric_name`` selects another
    per-frame overlap metric (e.g. ``"jaccard"``); ``save_details`` stores the ``(frames, K)`` scores in
    ``engine.state.metric_details`` (for ``MetricsSaver``).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        include_background: bool = False,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
        metric_name: str = "dice",
    ) -> None:
        metric_fn = ClipFrameMetric(metric_name, num_classes=num_classes, include_background=include_background)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)

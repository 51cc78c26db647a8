"""Per-epoch redraw of random training clips: calls ``dataset.set_epoch`` as each trainer epoch starts."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine, Events

__all__ = ["ClipEpochResampler"]


class ClipEpochResampler:
    """At ``EPOCH_STARTED``, ``dataset.set_epoch(engine.state.epoch - 1)`` (ignite counts epochs from 1, the clip
    sampler from 0), so a :class:`~vivim_monai.data.ClipDataset` in ``"random"`` mode serves new clips every epoch.

    Ignite creates an epoch's data iterator after ``EPOCH_STARTED``, so DataLoader workers (with
    ``persistent_workers=False``) see the new clips. Bundle config (a train handler)::

        {"_target_": "vivim_monai.handlers.ClipEpochResampler", "dataset": "@train#dataset"}
    """

    def __init__(self, dataset: Any) -> None:
        if not callable(getattr(dataset, "set_epoch", None)):
            raise TypeError(f"ClipEpochResampler needs a dataset with set_epoch(epoch), got {type(dataset).__name__}")
        self.dataset = dataset

    def attach(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        self.dataset.set_epoch(engine.state.epoch - 1)

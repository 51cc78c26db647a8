"""Inference speed of an evaluator in frames per second, timed between device synchronisations.

Each iteration is timed from ``ITERATION_STARTED`` to MONAI's ``IterationEvents.FORWARD_COMPLETED`` (batch
preparation, device transfer and the inferer; not decollation or postprocessing), or to ``ITERATION_COMPLETED`` on
engines without MONAI's iteration events. The device is synchronised at both ends (asynchronous CUDA kernels would
otherwise be timed at launch). The first ``warmup`` iterations (kernel selection, caches) are left out unless there
are no others. The result is published as ``engine.state.inference_timing`` (a dict) and ``engine.state.metrics["fps"]``
after every iteration, so :class:`~vivim_monai.handlers.EvaluationReport` finds it whatever the attachment order.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines import IterationEvents

from vivim_monai.metrics import DeviceTimer

__all__ = ["INFERENCE_TIMING", "InferenceTimer", "count_frames"]

#: ``engine.state`` attribute holding the timing dict.
INFERENCE_TIMING = "inference_timing"


def count_frames(output: Any) -> int:
    """Frames in an iteration's output: T summed over cases, from ``image`` (else ``pred``) of a collated dict
    ``(B, C, H, W, T)`` or of a list of per-case dicts ``(C, H, W, T)``."""
    items = output if isinstance(output, (list, tuple)) else [output]
    frames = 0
    for item in items:
        if not isinstance(item, dict):
            continue
        x = item.get("image") if item.get("image") is not None else item.get("pred")
        if x is not None and getattr(x, "ndim", 0) >= 4:
            frames += int(x.shape[-1]) * (int(x.shape[0]) if x.ndim == 5 else 1)
    return frames


class InferenceTimer:
    """Frames per second of an evaluator's iterations (see the module notes); attach with ``attach(engine)``.

    Args:
        device: the device to synchronise (default: ``engine.state.device``, else the CPU).
        warmup: untimed first iterations.
        metric_name: key of the frames-per-second value in ``engine.state.metrics`` (None: not stored there).
    """

    def __init__(self, device: torch.device | str | None = None, warmup: int = 1, metric_name: str | None = "fps"):
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.device, self.warmup, self.metric_name = device, int(warmup), metric_name
        self.span = "ITERATION_STARTED to ITERATION_COMPLETED"
        self.records: list[tuple[int, float]] = []
        self._timer = DeviceTimer(device)

    def attach(self, engine: Engine) -> None:
        stop: Any = Events.ITERATION_COMPLETED
        if engine.has_registered_events(IterationEvents.FORWARD_COMPLETED):
            stop, self.span = IterationEvents.FORWARD_COMPLETED, "ITERATION_STARTED to FORWARD_COMPLETED"
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self.start)
        engine.add_event_handler(stop, self.stop)

    def _device(self, engine: Engine) -> torch.device | str | None:
        return self.device if self.device is not None else getattr(engine.state, "device", None)

    def reset(self, engine: Engine | None = None) -> None:
        self.records, self._timer = [], DeviceTimer(self.device)

    def start(self, engine: Engine) -> None:
        self._timer.device = self._device(engine)
        self._timer.start()

    def stop(self, engine: Engine) -> None:
        if not self._timer.running:
            return
        self.records.append((count_frames(engine.state.output), self._timer.stop()))
        summary = self.summary()
        setattr(engine.state, INFERENCE_TIMING, summary)
        if self.metric_name:
            engine.state.metrics[self.metric_name] = summary["fps"]

    def summary(self) -> dict[str, Any]:
        """``fps`` (NaN before any iteration), ``frames``, ``seconds``, ``iterations`` timed, ``warmup`` and span."""
        timed = self.records[self.warmup :] or self.records
        frames, seconds = sum(r[0] for r in timed), sum(r[1] for r in timed)
        return {
            "fps": frames / seconds if frames and seconds > 0 else math.nan,
            "frames": frames,
            "seconds": seconds,
            "iterations": len(timed),
            "warmup_iterations_excluded": len(self.records) - len(timed),
            "span": self.span,
        }

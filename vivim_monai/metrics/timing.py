"""The project's one timer: wall time between device synchronisations (inference speed, benchmarks).

CUDA (and MPS) kernels run asynchronously: a clock read right after a forward call measures the launch, not the
work (the Vivim fork's FPS had this defect). :class:`DeviceTimer` starts and stops only after the device finished.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

__all__ = ["DeviceTimer", "synchronize", "time_calls"]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class DeviceTimer:
    """Seconds from :meth:`start` to :meth:`stop`, each after a synchronisation of ``device``; also a context manager
    (``with DeviceTimer(device) as timer: ...`` then ``timer.seconds``)."""

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = device
        self.seconds: float | None = None
        self._start: float | None = None

    @property
    def running(self) -> bool:
        return self._start is not None

    def start(self) -> None:
        synchronize(self.device)
        self._start = time.perf_counter()

    def stop(self) -> float:
        if self._start is None:
            raise RuntimeError("DeviceTimer.stop() without start()")
        synchronize(self.device)
        self.seconds, self._start = time.perf_counter() - self._start, None
        return self.seconds

    def __enter__(self) -> DeviceTimer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def time_calls(
    fn: Callable[[], Any], repeats: int, device: torch.device | str | None = None, warmup: int = 1
) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (each timed on its own), after ``warmup`` untimed calls."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    timer, seconds = DeviceTimer(device), []
    for _ in range(repeats):
        with timer:
            fn()
        seconds.append(timer.seconds)
    return seconds

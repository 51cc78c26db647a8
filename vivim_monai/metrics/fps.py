"""Inference speed in frames per second, timed between device synchronisations.

CUDA (and MPS) kernels run asynchronously: a timer read right after a forward call measures the launch, not the
work (the Vivim fork's FPS had this defect). The clock starts and stops only after the device has finished.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

__all__ = ["measure_fps", "synchronize"]


def synchronize(device: torch.device | str | None = None) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_fps(
    fn: Callable[[], Any],
    frames: int,
    device: torch.device | str | None = None,
    warmup: int = 1,
    repeats: int = 3,
) -> float:
    """Frames per second of ``fn()``, which processes ``frames`` frames per call (e.g. one clip's T times B).

    ``warmup`` untimed calls (kernel selection, caches) come first; then ``repeats`` calls are timed as one span
    that starts and ends after a device synchronisation.
    """
    if frames < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need frames >= 1, repeats >= 1, warmup >= 0; got {frames}, {repeats}, {warmup}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return frames * repeats / (time.perf_counter() - start)

"""The order in which a selective scan visits the tokens of a clip.

Vivim's tokens are stored frame-major, (t, h, w). Its three scans visit them in three orders: ``forward`` (memory
order), ``reverse`` and ``temporal`` (h, w, t: each pixel's frames consecutively). The compiled CPU kernel reads
the operands in scan order directly; the other backends get permuted copies via :meth:`ScanOrder.to_scan` and
:meth:`ScanOrder.from_scan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["ScanOrder"]

_KINDS = {"forward": 0, "reverse": 1, "temporal": 2}


@dataclass(frozen=True)
class ScanOrder:
    """``kind`` is ``"forward"``, ``"reverse"`` or ``"temporal"``; ``num_frames`` T is used by ``"temporal"``."""

    kind: str = "forward"
    num_frames: int = 1

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"scan order kind must be one of {sorted(_KINDS)}, got {self.kind!r}")
        if int(self.num_frames) < 1:
            raise ValueError(f"scan order needs num_frames >= 1, got {self.num_frames}")

    @property
    def kernel_code(self) -> int:
        return _KINDS[self.kind]

    def check_length(self, length: int) -> None:
        if self.kind == "temporal" and length % self.num_frames:
            raise ValueError(f"temporal scan order: sequence length {length} is not a multiple of T={self.num_frames}")

    def to_scan(self, x: torch.Tensor) -> torch.Tensor:
        """Reorder the last axis from memory order (t, h, w) to scan order."""
        if self.kind == "forward":
            return x
        if self.kind == "reverse":
            return x.flip(-1)
        self.check_length(x.shape[-1])
        return x.unflatten(-1, (self.num_frames, -1)).transpose(-1, -2).flatten(-2)

    def from_scan(self, y: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_scan`."""
        if self.kind == "forward":
            return y
        if self.kind == "reverse":
            return y.flip(-1)
        self.check_length(y.shape[-1])
        return y.unflatten(-1, (-1, self.num_frames)).transpose(-1, -2).flatten(-2)

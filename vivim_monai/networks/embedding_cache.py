"""A disk cache of a frozen encoder's outputs, addressed by content: train a network's head without its encoder.

The key of a frame is the SHA-256 of the exact bytes the encoder receives, in a folder named by the SHA-256 of the
encoder's weights, so a hit is the same computation by construction: a changed frame (any augmentation, another
resize) or other weights miss and are computed. Files are written atomically; an unreadable file is recomputed.
Caching pays only when identical frames recur, i.e. training without random image augmentation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

from vivim_monai.utils import atomic_write

__all__ = ["EmbeddingCache", "module_digest"]


def module_digest(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class EmbeddingCache:
    """``cache(inputs, encoder)``: ``encoder(inputs)`` frame by frame from ``directory``, computing only misses."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self._digest: tuple[tuple[int, ...], str] | None = None  # (tensor versions, digest) of the last encoder

    def _folder(self, encoder: nn.Module) -> Path:
        """The encoder's folder; its digest is recomputed only when a weight tensor was replaced or changed in place."""
        versions = (id(encoder), *(v for t in encoder.state_dict().values() for v in (t.data_ptr(), t._version)))
        if self._digest is None or self._digest[0] != versions:
            self._digest = (versions, module_digest(encoder))
        return self.directory / self._digest[1][:24]

    def __call__(self, inputs: torch.Tensor, encoder: nn.Module, run: Callable[[torch.Tensor], torch.Tensor]):
        """``inputs`` ``(N, ...)`` -> ``run(inputs)`` ``(N, ...)``, reading and writing one file per frame."""
        folder = self._folder(encoder)
        frames = inputs.detach().cpu().contiguous()
        paths = [folder / f"{hashlib.sha256(frame.numpy().tobytes()).hexdigest()}.pt" for frame in frames]
        outputs: list[torch.Tensor | None] = [self._read(path) for path in paths]
        missing = [i for i, out in enumerate(outputs) if out is None]
        self.hits += len(paths) - len(missing)
        self.misses += len(missing)
        if missing:
            computed = run(inputs[missing]).detach()
            for i, embedding in zip(missing, computed):
                stored = embedding.cpu().clone()
                atomic_write(paths[i], lambda name, t=stored: torch.save(t, name))
                outputs[i] = stored
        return torch.stack([out for out in outputs if out is not None]).to(inputs.device)

    @staticmethod
    def _read(path: Path) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file (e.g. a full disk) is recomputed and rewritten
            return None

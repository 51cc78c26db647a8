"""``ResumeCheckpointLoader``: MONAI's ``CheckpointLoader`` for ``resume_checkpoint``, with clear errors and old files.

MONAI/ignite fail on a checkpoint that lacks an entry of ``load_dict`` with ``Key 'optimizer' from x is not found
in y``. Here a file that is no training state (e.g. ``model.pt``) is named as such, and entries listed as
``optional`` (the RNG state, absent from checkpoints saved before it was added) are skipped with a warning: the run
resumes, only without repeating the uninterrupted run's random draws.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from ignite.engine import Engine
from monai.handlers import CheckpointLoader

__all__ = ["ResumeCheckpointLoader"]

logger = logging.getLogger(__name__)


def _saved_keys(path: str) -> list[str]:
    """Top-level entries of a checkpoint (memory-mapped when the file format allows it)."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        saved = torch.load(path, map_location="cpu", weights_only=True)
    return sorted(saved) if isinstance(saved, dict) else []


class ResumeCheckpointLoader(CheckpointLoader):
    """MONAI ``CheckpointLoader`` (same arguments) whose ``optional`` entries may be missing from the file.

    Args:
        optional: entries of ``load_dict`` restored only when the checkpoint has them.
    """

    def __init__(self, load_path: str, load_dict: dict, optional: Sequence[str] = ("rng",), **kwargs: Any) -> None:
        super().__init__(load_path, load_dict, **kwargs)
        self.optional = tuple(optional)

    def __call__(self, engine: Engine) -> None:
        saved = _saved_keys(self.load_path)
        absent = [key for key in self.load_dict if key not in saved]
        required = [key for key in absent if key not in self.optional]
        if required and len(self.load_dict) > 1:
            raise ValueError(
                f"{self.load_path}: not a training state checkpoint: it has {saved}, resuming needs "
                f"{sorted(self.load_dict)} (the rolling models/checkpoint_epoch=N.pt)"
            )
        skipped = [key for key in absent if key in self.optional]
        if not skipped:
            super().__call__(engine)
            return
        logger.warning(
            "%s has no %s state (saved by an older version): resuming without it, so random draws will differ "
            "from an uninterrupted run",
            self.load_path,
            ", ".join(skipped),
        )
        load_dict = self.load_dict
        self.load_dict = {key: value for key, value in load_dict.items() if key not in skipped}
        try:
            super().__call__(engine)
        finally:
            self.load_dict = load_dict

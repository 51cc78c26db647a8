"""Clips of consecutive frames: which windows of a case are used, per epoch, and a dataset that serves them.

The ovarian fork of Vivim capped the clips per case (``max_numerosity``) but built its loader once, so its "random"
clips were never re-drawn; it also dropped tail frames at test time. Here:

* training clips are windows of ``clip_length`` consecutive (annotated) frames every ``stride`` frames; when a case
  has more than ``max_numerosity`` of them, ``"equispaced"`` keeps an evenly spread, fixed subset and ``"random"``
  draws a new subset every epoch (seeded by ``seed``, epoch and case, so runs are reproducible);
* evaluation clips are deterministic and cover every frame (the last window is aligned to the end of the case);
  a case shorter than ``clip_length`` yields one clip that repeats its last frame, and the padding is recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.data import CacheDataset, MetaTensor

__all__ = ["CLIP_MODES", "ClipDataset", "ClipSampler", "select_frames"]

CLIP_MODES = ("equispaced", "random")


@dataclass(frozen=True)
class ClipSampler:
    """Clip windows of a case: ``train_starts`` (per epoch) and ``eval_starts`` (covering every frame)."""

    clip_length: int
    stride: int | None = None
    max_numerosity: int | None = None
    mode: str = "equispaced"
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.clip_length) < 1:
            raise ValueError(f"clip_length must be >= 1, got {self.clip_length}")
        if self.stride is not None and int(self.stride) < 1:
            raise ValueError(f"stride must be >= 1, got {self.stride}")
        if self.max_numerosity is not None and int(self.max_numerosity) < 1:
            raise ValueError(f"max_numerosity must be >= 1 or None, got {self.max_numerosity}")
        if self.mode not in CLIP_MODES:
            raise ValueError(f"mode must be one of {CLIP_MODES}, got {self.mode!r}")

    @property
    def step(self) -> int:
        return int(self.stride or self.clip_length)

    def candidate_starts(self, num_frames: int) -> list[int]:
        """Start frames of all full windows (one window at 0 when the case is shorter than a clip)."""
        return list(range(0, max(num_frames - self.clip_length, 0) + 1, self.step))

    def train_starts(self, num_frames: int, epoch: int = 0, case_index: int = 0) -> list[int]:
        """The windows of one case used in ``epoch``."""
        starts = self.candidate_starts(num_frames)
        if self.max_numerosity is None or len(starts) <= self.max_numerosity:
            return starts
        if self.mode == "equispaced":
            picks = np.linspace(0, len(starts) - 1, self.max_numerosity).round().astype(int)
        else:
            rng = np.random.default_rng([self.seed, epoch, case_index])
            picks = np.sort(rng.choice(len(starts), size=self.max_numerosity, replace=False))
        return [starts[i] for i in picks]

    def eval_starts(self, num_frames: int) -> list[int]:
        """Deterministic windows covering every frame; the last one ends at the last frame."""
        starts = self.candidate_starts(num_frames)
        last = max(num_frames - self.clip_length, 0)
        return starts if starts[-1] == last else starts + [last]


def select_frames(volume: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """Frames ``start .. start+length-1`` of a ``(C, H, W, T)`` tensor, repeating the last frame past the end."""
    frames = volume.shape[-1]
    index = torch.clamp(torch.arange(start, start + length), max=frames - 1)
    clip = volume.index_select(-1, index.to(volume.device))
    if isinstance(clip, MetaTensor):
        clip.meta["clip_start"], clip.meta["clip_padded_frames"] = int(start), int(max(start + length - frames, 0))
    return clip


class ClipDataset(torch.utils.data.Dataset):
    """Clips of cases as dictionaries, re-drawn per epoch in training (call :meth:`set_epoch` each epoch).

    Args:
        data: datalist entries (with ``case_transform``, e.g. ``LoadCined`` + fan crop + resize) or already loaded
            cases whose ``keys`` hold ``(C, H, W, T)`` tensors aligned in time; other entries are copied into every
            clip. A plain list, so bundle overrides of ``train#dataset#data`` (MONAI Label) work.
        sampler: the clip windows.
        keys: the time-aligned entries to cut (e.g. ``("image", "label")``).
        case_transform: turns an entry into a loaded case; applied once per case and cached in memory (the cases are
            needed up front anyway, to count their frames). Memory: the preprocessed frames of all cases.
        transform: applied to every clip dictionary (augmentation in training, none in evaluation).
        training: training windows (per epoch) or evaluation windows (cover every frame).
        cache_num_workers: threads loading the cases.

    With DataLoader workers, keep ``persistent_workers=False`` so that each epoch's workers see the new clips.
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        sampler: ClipSampler,
        keys: Sequence[str] = ("image", "label"),
        case_transform: Callable[[dict[str, Any]], Any] | None = None,
        transform: Callable[[dict[str, Any]], Any] | None = None,
        training: bool = True,
        cache_num_workers: int = 1,
    ) -> None:
        self.data = list(data)
        if case_transform is None:
            self.cases = self.data
        else:
            cached = CacheDataset(
                self.data, case_transform, cache_rate=1.0, num_workers=cache_num_workers, progress=False
            )
            self.cases = [cached[i] for i in range(len(cached))]
        self.sampler, self.keys = sampler, tuple(keys)
        self.transform, self.training = transform, training
        self.epoch = 0
        self.index: list[tuple[int, int]] = []
        self.set_epoch(0)

    def _num_frames(self, case: dict[str, Any]) -> int:
        lengths = {key: int(case[key].shape[-1]) for key in self.keys if key in case}
        if not lengths:
            raise ValueError(f"case {case.get('case_id', '?')} has none of the keys {self.keys}")
        if len(set(lengths.values())) > 1:
            raise ValueError(f"case {case.get('case_id', '?')}: keys are not aligned in time: {lengths} frames")
        return next(iter(lengths.values()))

    def set_epoch(self, epoch: int) -> None:
        """Rebuild the clip list for ``epoch`` (only changes anything in training with ``mode="random"``)."""
        self.epoch = int(epoch)
        self.index = []
        for case_index, case in enumerate(self.cases):
            frames = self._num_frames(case)
            starts = (
                self.sampler.train_starts(frames, self.epoch, case_index)
                if self.training
                else self.sampler.eval_starts(frames)
            )
            self.index.extend((case_index, start) for start in starts)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> Any:
        case_index, start = self.index[item]
        case = self.cases[case_index]
        clip = {k: v for k, v in case.items() if k not in self.keys}
        for key in self.keys:
            if key in case:
                clip[key] = select_frames(case[key], start, self.sampler.clip_length)
        clip["clip_start"] = start
        return self.transform(clip) if self.transform is not None else clip

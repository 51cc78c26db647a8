"""One place that reads the per-case fields of a MONAI evaluator's iteration from ``engine.state``.

With ``decollate=True``, ``engine.state.output`` is a list of per-case dicts (``pred``, ``label``, ``image``) after
the postprocessing; datalist entries that the postprocessing did not produce (``case_id``, ``frame_order``,
``image_source``) stay in the matching ``engine.state.batch`` item, so both are read. Collation wraps strings and
numbers in lists or tensors; they are unwrapped here. A collated dict (``decollate=False``) is decollated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch

from vivim_monai.io import case_id_for
from vivim_monai.utils import argmax_indices

__all__ = ["CaseFields", "case_fields", "engine_cases"]


@dataclass
class CaseFields:
    """What the handlers need of one case.

    ``pred``/``label`` are ``(1, H, W, T)`` class indices (multi-channel inputs are reduced with argmax);
    ``source`` is what :func:`vivim_monai.data.load_cine` re-reads (``image_source``, else the meta's frame files,
    else ``filename_or_obj``); ``frame_time_ms`` is None when unknown or only a default guess.
    """

    case_id: str
    pred: torch.Tensor
    label: torch.Tensor | None
    source: str | list[str] | None
    spacing_mm: tuple[float, float] | None
    frame_time_ms: float | None
    frame_order: str | None

    @property
    def num_frames(self) -> int:
        return int(self.pred.shape[-1])


def _items(data: Any) -> list[Mapping[str, Any]]:
    """Per-case dicts of an output or batch: a list as is, a collated dict (5-D ``pred``/``image``) decollated."""
    if isinstance(data, Mapping):
        batched = data.get("pred", data.get("image"))
        return list(decollate_batch(data, detach=True)) if getattr(batched, "ndim", 0) == 5 else [data]
    if isinstance(data, (list, tuple)) and all(isinstance(item, Mapping) for item in data):
        return list(data)
    return []


def _unwrap(value: Any) -> Any:
    """A collated single value back to itself: ``["a"]`` -> ``"a"``, ``tensor([2.])`` -> ``2.0``."""
    while isinstance(value, (list, tuple)) and len(value) == 1:
        value = value[0]
    if isinstance(value, (torch.Tensor, np.ndarray)) and int(np.prod(value.shape)) == 1:
        return value.item()
    return value


def _strings(value: Any) -> str | list[str] | None:
    """A path, or a list of paths (nested collation lists flattened); None when absent."""
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return str(value)
    flat: list[str] = []
    for item in value:
        item = _strings(item)
        if item is not None:
            flat.extend([item] if isinstance(item, str) else item)
    if not flat:
        return None
    return flat[0] if len(flat) == 1 else flat


def _floats(value: Any) -> list[float]:
    if value is None:
        return []
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        return [float(v) for v in np.asarray(array, dtype=np.float64).ravel()]
    if isinstance(value, (list, tuple)):
        return [f for item in value for f in _floats(item)]
    return [float(value)]


def _spacing(value: Any) -> tuple[float, float] | None:
    values = _floats(value)
    if len(values) == 1:
        values = values * 2
    if len(values) < 2 or not all(math.isfinite(v) and v > 0 for v in values[:2]):
        return None
    return values[0], values[1]


def _index_map(x: Any) -> torch.Tensor | None:
    """``(1, H, W, T)`` class indices of ``(H, W, T)`` indices or ``(C, H, W, T)`` (argmax when ``C > 1``)."""
    if x is None:
        return None
    x = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
    if x.ndim == 3:
        return x[None]
    if x.ndim != 4:
        raise ValueError(f"expected one case (1 or K, H, W, T), got shape {tuple(x.shape)}")
    return argmax_indices(x, dim=0, keepdim=True) if x.shape[0] > 1 else x


def _meta(*tensors: Any) -> dict[str, Any]:
    """Merged metadata, later tensors winning (the preprocessed image is given last)."""
    meta: dict[str, Any] = {}
    for tensor in tensors:
        meta.update(getattr(tensor, "meta", None) or {})
    return meta


def case_fields(
    output: Mapping[str, Any], batch: Mapping[str, Any] | None = None, default_id: str = "case"
) -> CaseFields:
    """The :class:`CaseFields` of one decollated output dict and its batch item (entries looked up in both)."""
    batch = batch or {}

    def entry(key: str) -> Any:
        return output[key] if output.get(key) is not None else batch.get(key)

    pred = _index_map(output.get("pred"))
    if pred is None:
        raise KeyError(f"the output has no 'pred' (keys: {sorted(map(str, output))})")
    meta = _meta(batch.get("image"), output.get("pred"), output.get("image"))
    filename = _strings(meta.get("filename_or_obj"))
    source = _strings(entry("image_source")) or _strings(meta.get("frame_files")) or filename
    case_id = _unwrap(entry("case_id"))
    if case_id is None:
        named = filename if isinstance(filename, str) else source if isinstance(source, str) else None
        case_id = case_id_for(named) if named else default_id
    frame_time = _floats(meta.get("frame_time_ms"))
    guessed = _unwrap(meta.get("frame_time_source")) == "default"
    order = _unwrap(entry("frame_order"))
    return CaseFields(
        case_id=str(case_id),
        pred=pred,
        label=_index_map(output.get("label")),
        source=source,
        spacing_mm=_spacing(meta.get("pixel_spacing_mm")),
        frame_time_ms=frame_time[0] if frame_time and not guessed and math.isfinite(frame_time[0]) else None,
        frame_order=str(order) if order is not None else None,
    )


def engine_cases(engine: Any) -> list[CaseFields]:
    """:func:`case_fields` of every case in the engine's current iteration (``state.output`` with ``state.batch``)."""
    outputs = _items(engine.state.output)
    batches = _items(engine.state.batch)
    if len(batches) != len(outputs):
        batches = [{}] * len(outputs)
    iteration = getattr(engine.state, "iteration", 0)
    return [
        case_fields(output, batch, default_id=f"case_{iteration:05d}_{index}")
        for index, (output, batch) in enumerate(zip(outputs, batches))
    ]

"""Evaluation report of a segmented-cine evaluator: per-frame, per-video and summary metrics, confusion matrices.

Every case is scored as it completes with :mod:`vivim_monai.metrics` (``per_frame_metrics``, ``confusion_matrix``,
``temporal_consistency``); the files are written when the run completes. Under DDP the per-case results are gathered
to every rank (``all_gather_object``), every rank computes the same summary for ``engine.state.metrics``, and only
rank 0 writes. Temporal metrics need time-ordered frames: a case whose datalist entry says ``frame_order ==
"unknown"`` (BAGLS) gets none ("n/a").
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch.distributed as dist
from ignite.engine import Engine, Events

from vivim_monai.engines.cases import CaseFields, engine_cases
from vivim_monai.handlers.timing import INFERENCE_TIMING
from vivim_monai.io.confusion_plot import write_confusion_png
from vivim_monai.metrics import (
    TemporalReference,
    confusion_matrix,
    normalise_confusion,
    per_frame_metrics,
    summarise,
    temporal_consistency,
)
from vivim_monai.utils import atomic_write, atomic_write_csv

__all__ = ["TEMPORAL_KEYS", "CaseResult", "EvaluationReport"]

logger = logging.getLogger("vivim_monai.evaluate")

#: Per-video, per-class outputs of ``temporal_consistency`` that the report keeps.
TEMPORAL_KEYS = (
    "pred_inconsistent_fraction",
    "gt_inconsistent_fraction",
    "pred_mean_abs_residual",
    "gt_mean_abs_residual",
    "pred_stability",
    "gt_stability",
    "stability_gap",
    "thresholds",
)
NOT_AVAILABLE = "n/a"
ABSENT_IN_BOTH = (
    "a score whose denominator is zero (e.g. Dice of a class absent from both prediction and ground truth in a frame) "
    "is undefined (NaN): left out of every mean, never counted as 0 or 1; valid_frames counts the frames that did "
    "count. HD95 of a class present in only one of them is the frame diagonal."
)


@dataclass
class CaseResult:
    """One case's scores: ``frames`` ``{metric: (T, K)}``, pixel ``confusion`` ``(K, K)``, ``temporal``
    ``{key: (K,)}`` (None when skipped, the reason in ``temporal_note``)."""

    case_id: str
    frames: dict[str, np.ndarray]
    confusion: np.ndarray
    temporal: dict[str, np.ndarray] | None
    temporal_note: str
    frame_order: str | None
    spacing_mm: tuple[float, float] | None

    @property
    def num_frames(self) -> int:
        return int(next(iter(self.frames.values())).shape[0])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather(results: list[CaseResult]) -> list[CaseResult]:
    """All ranks' results on every rank (rank order); repeated case ids (sampler padding) kept once."""
    if not _distributed():
        return results
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, results)
    gathered, seen = [], set()
    for result in (r for part in parts for r in part):
        if result.case_id not in seen:
            seen.add(result.case_id)
            gathered.append(result)
    repeats = sum(len(part) for part in parts) - len(gathered)
    if repeats:
        logger.warning("%d repeated case(s) from the distributed sampler were counted once", repeats)
    return gathered


def _cell(value: Any) -> str:
    """CSV text of a number: shortest round-trip form, ``nan`` for undefined."""
    return repr(float(value))


def _number(value: Any) -> float | None:
    """JSON number; NaN (undefined) becomes null."""
    value = float(value)
    return None if np.isnan(value) else value


class EvaluationReport:
    """Score every case of an evaluator and write the report into ``output_dir`` when the run completes.

    Files (names start with ``prefix``): ``metrics_per_frame.csv``, ``metrics_per_video.csv``,
    ``metrics_summary.json``, ``confusion_matrix.csv`` (pixel counts, rows: ground truth, columns: prediction),
    ``confusion_matrix_recall.csv`` (rows sum to 1), ``confusion_matrix_precision.csv`` (columns sum to 1) and, with
    ``plot``, a PNG of each. ``engine.state.metrics`` gets ``mean_dice_fg`` (foreground mean over all frames),
    ``mean_dice_fg_by_video``, ``dice_<class>``, ``mean_jaccard_fg`` and ``mean_hd95_fg`` (keys start with
    ``prefix``); a "Dice per class" line is logged to ``vivim_monai.evaluate``. An
    :class:`~vivim_monai.handlers.InferenceTimer` on the same engine adds its timing to the summary.

    Args:
        output_dir: folder of the report (created).
        class_names: all class names, background first.
        num_classes: K (default: ``len(class_names)``; must agree).
        include_hd95: HD95 per frame (mm when the image metadata has ``pixel_spacing_mm``, else pixels).
        temporal: temporal consistency per video (skipped for ``frame_order == "unknown"``).
        plot: write the confusion-matrix PNGs.
        prefix: prepended to file names and metric keys (e.g. ``"test_"``).
        temporal_reference: TC bounds and thresholds fitted on a data set's ground truth (Painchaud's protocol);
            None fits them on each video's own ground truth (see :mod:`vivim_monai.metrics.temporal`).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        num_classes: int | None = None,
        include_hd95: bool = True,
        temporal: bool = True,
        plot: bool = True,
        prefix: str = "",
        temporal_reference: TemporalReference | None = None,
    ) -> None:
        self.class_names = [str(name) for name in class_names]
        self.num_classes = int(num_classes) if num_classes is not None else len(self.class_names)
        if len(self.class_names) != self.num_classes or len(set(self.class_names)) != self.num_classes:
            raise ValueError(f"need {self.num_classes} unique class names, got {self.class_names}")
        self.output_dir = Path(output_dir)
        self.include_hd95, self.temporal, self.plot, self.prefix = include_hd95, temporal, plot, prefix
        self.temporal_reference = temporal_reference
        self.results: list[CaseResult] = []
        self.summary: dict[str, Any] = {}

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def reset(self, engine: Engine | None = None) -> None:
        self.results, self.summary = [], {}

    def path(self, name: str) -> Path:
        return self.output_dir / f"{self.prefix}{name}"

    def evaluate_case(self, case: CaseFields) -> CaseResult:
        """Score one case with the project's metrics."""
        if case.label is None:
            raise ValueError(
                f"{case.case_id}: no label to evaluate against (CaseOutputHandler writes unlabelled cases)"
            )
        k = self.num_classes
        frames = per_frame_metrics(case.pred, case.label, k, spacing=case.spacing_mm, include_hd95=self.include_hd95)
        temporal, note = None, ""
        if not self.temporal:
            note = "not computed"
        elif case.frame_order == "unknown":
            note = "frame order unknown"
        else:
            full = temporal_consistency(case.pred, case.label, k, reference=self.temporal_reference)
            temporal = {key: np.asarray(full[key], dtype=np.float64) for key in TEMPORAL_KEYS}
        return CaseResult(
            case_id=case.case_id,
            frames=frames,
            confusion=confusion_matrix(case.pred, case.label, k),
            temporal=temporal,
            temporal_note=note,
            frame_order=case.frame_order,
            spacing_mm=case.spacing_mm,
        )

    def iteration_completed(self, engine: Engine) -> None:
        self.results.extend(self.evaluate_case(case) for case in engine_cases(engine))

    def completed(self, engine: Engine) -> None:
        results = _gather(self.results)
        if not results:
            logger.warning("EvaluationReport: no cases were evaluated; nothing written")
            return
        overall = summarise([r.frames for r in results])
        self.summary = self._summary(results, overall, getattr(engine.state, INFERENCE_TIMING, None))
        engine.state.metrics.update(self._state_metrics(overall))
        dice = overall["dice"]
        logger.info(
            "Dice per class (mean over %d frames of %d cases): %s; foreground mean %.4f",
            sum(r.num_frames for r in results),
            len(results),
            ", ".join(f"{name} {value:.4f}" for name, value in zip(self.class_names, dice["by_frame"])),
            dice["by_frame_foreground"],
        )
        if not _distributed() or dist.get_rank() == 0:
            self._write(results, overall)
            logger.info("evaluation report written to %s", self.output_dir)

    def _per_class(self, values: Sequence[float], foreground: float) -> dict[str, float | None]:
        out = {name: _number(v) for name, v in zip(self.class_names, values)}
        out["foreground_mean"] = _number(foreground)
        return out

    def _summary(self, results: list[CaseResult], overall: dict, timing: dict | None) -> dict[str, Any]:
        units = {"mm" if r.spacing_mm else "pixels" for r in results}
        summary: dict[str, Any] = {
            "num_cases": len(results),
            "num_frames": sum(r.num_frames for r in results),
            "class_names": self.class_names,
            "absent_in_both": ABSENT_IN_BOTH,
            "by_frame": {m: self._per_class(s["by_frame"], s["by_frame_foreground"]) for m, s in overall.items()},
            "by_video": {m: self._per_class(s["by_video"], s["by_video_foreground"]) for m, s in overall.items()},
            "valid_frames": {m: dict(zip(self.class_names, map(int, s["valid_frames"]))) for m, s in overall.items()},
        }
        if self.include_hd95:
            summary["hd95_unit"] = (
                units.pop() if len(units) == 1 else "mm where the pixel spacing is known, else pixels"
            )
        scored = [r for r in results if r.temporal is not None]
        temporal: dict[str, Any] = {
            "num_cases": len(scored),
            "skipped": {r.case_id: r.temporal_note for r in results if r.temporal is None},
            "reference": "given" if self.temporal_reference is not None else "each video's own ground truth",
        }
        if scored:
            stats = summarise([r.temporal for r in scored])  # type: ignore[misc]
            temporal["by_video"] = {
                k: self._per_class(s["by_video"], s["by_video_foreground"]) for k, s in stats.items()
            }
        summary["temporal"] = temporal
        if timing is not None:
            summary["inference_timing"] = {k: _number(v) if isinstance(v, float) else v for k, v in timing.items()}
        return summary

    def _state_metrics(self, overall: dict) -> dict[str, float]:
        p = self.prefix
        metrics = {
            f"{p}mean_dice_fg": float(overall["dice"]["by_frame_foreground"]),
            f"{p}mean_dice_fg_by_video": float(overall["dice"]["by_video_foreground"]),
            f"{p}mean_jaccard_fg": float(overall["jaccard"]["by_frame_foreground"]),
        }
        metrics.update({f"{p}dice_{n}": float(v) for n, v in zip(self.class_names, overall["dice"]["by_frame"])})
        if "hd95" in overall:
            metrics[f"{p}mean_hd95_fg"] = float(overall["hd95"]["by_frame_foreground"])
        return metrics

    def _write(self, results: list[CaseResult], overall: dict) -> None:
        names, metrics = self.class_names, list(overall)
        header = ["case_id", "frame"] + [f"{m}_{n}" for m in metrics for n in names]
        rows = [
            [r.case_id, str(t)] + [_cell(r.frames[m][t, c]) for m in metrics for c in range(len(names))]
            for r in results
            for t in range(r.num_frames)
        ]
        atomic_write_csv(self.path("metrics_per_frame.csv"), header, rows)

        header = ["case_id", "n_frames", "frame_order"]
        header += [f"{m}_{n}" for m in metrics for n in [*names, "fg_mean"]]
        if self.temporal:
            header += [f"{key}_{n}" for key in TEMPORAL_KEYS for n in names]
        rows = []
        for i, r in enumerate(results):
            row = [r.case_id, str(r.num_frames), r.frame_order or ""]
            for m in metrics:
                row += [_cell(v) for v in overall[m]["per_video"][i]] + [_cell(overall[m]["per_video_foreground"][i])]
            if self.temporal:
                values = [v for key in TEMPORAL_KEYS for v in r.temporal[key]] if r.temporal else None
                row += [_cell(v) for v in values] if values else [NOT_AVAILABLE] * (len(TEMPORAL_KEYS) * len(names))
            rows.append(row)
        atomic_write_csv(self.path("metrics_per_video.csv"), header, rows)

        atomic_write(
            self.path("metrics_summary.json"),
            lambda name: Path(name).write_text(
                json.dumps(self.summary, indent=2, allow_nan=False) + "\n", encoding="utf-8"
            ),
        )

        counts = np.sum([r.confusion for r in results], axis=0)
        recall, precision = normalise_confusion(counts, by="true"), normalise_confusion(counts, by="pred")
        tables = (
            ("confusion_matrix", counts, str, "Pixel confusion matrix (counts; colour: row fraction)"),
            ("confusion_matrix_recall", recall, _cell, "Confusion matrix normalised by ground truth (recall)"),
            ("confusion_matrix_precision", precision, _cell, "Confusion matrix normalised by prediction (precision)"),
        )
        for stem, table, fmt, title in tables:
            rows = [[name] + [fmt(v) for v in row] for name, row in zip(names, table)]
            atomic_write_csv(self.path(f"{stem}.csv"), ["true\\pred", *names], rows)
            if self.plot:
                shade = recall if table is counts else table
                text = (lambda v: f"{int(v)}") if table is counts else (lambda v: f"{v:.3f}")
                write_confusion_png(self.path(f"{stem}.png"), table, names, title, shade=shade, fmt=text)

"""Fold statistics of cross-validated models: mean ± sd over folds, paired per-fold differences, tables as text."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from vivim_monai.experiments.cases import jaccard_empty_as_one
from vivim_monai.experiments.runs import ModelRun

__all__ = [
    "EMPTY_AS_ONE",
    "METRICS",
    "TEMPORAL",
    "FoldStat",
    "ModelStats",
    "comparison_csv",
    "comparison_markdown",
    "fold_stat",
    "model_stats",
    "paired_difference",
    "signed_text",
    "winner_sentence",
]

#: per-frame metrics of ``metrics_summary.json`` ``by_frame`` (foreground mean), with their table titles.
METRICS = (("dice", "Dice"), ("jaccard", "Jaccard"), ("precision", "precision"), ("recall", "recall"), ("hd95", "HD95"))
#: temporal metrics of ``metrics_summary.json`` ``temporal.by_video`` (foreground mean).
TEMPORAL = (("pred_inconsistent_fraction", "pred. inconsistent fraction"), ("stability_gap", "stability gap"))
#: foreground Jaccard per frame with a class absent from both masks counted as 1 (from ``metrics_per_frame.csv``).
EMPTY_AS_ONE = ("jaccard_empty_as_one", "Jaccard, both empty = 1")


@dataclass
class FoldStat:
    """Per-fold values (undefined ones left out) with their mean and sample sd (ddof 1; NaN below two folds)."""

    values: dict[int, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values.values()))) if self.values else math.nan

    @property
    def sd(self) -> float:
        return float(np.std(list(self.values.values()), ddof=1)) if self.n > 1 else math.nan

    def text(self, digits: int = 3, folds: int | None = None) -> str:
        """``mean ± sd``; one value alone; ``n/a`` without values; ``(k/N folds)`` when some folds lack a value."""
        if not self.values:
            return "n/a"
        text = f"{self.mean:.{digits}f}" if self.n == 1 else f"{self.mean:.{digits}f} ± {self.sd:.{digits}f}"
        return text if folds is None or self.n >= folds else f"{text} ({self.n}/{folds} folds)"


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def fold_stat(summaries: dict[int, dict[str, Any]], read: Callable[[dict[str, Any]], Any]) -> FoldStat:
    """``read(summary)`` of every fold; missing keys, None and NaN are left out."""
    values = {}
    for fold, summary in summaries.items():
        try:
            value = _number(read(summary))
        except (KeyError, TypeError, ValueError):
            value = None
        if value is not None:
            values[fold] = value
    return FoldStat(values)


def paired_difference(first: FoldStat, second: FoldStat) -> FoldStat:
    """``first - second`` on the folds both have (shared folds make the comparison paired)."""
    return FoldStat({k: first.values[k] - second.values[k] for k in sorted(first.values) if k in second.values})


@dataclass
class ModelStats:
    """Everything the comparison tables show for one model."""

    name: str
    folds: list[int]
    parameters: int | None
    metrics: dict[str, FoldStat]
    hd95_unit: str
    temporal_skipped: str
    fps: FoldStat
    train_minutes: FoldStat


def _skip_reason(summaries: dict[int, dict[str, Any]]) -> str:
    reasons = {str(r) for s in summaries.values() for r in s.get("temporal", {}).get("skipped", {}).values()}
    return "; ".join(sorted(reasons))


def model_stats(run: ModelRun, parameters: int | None) -> ModelStats:
    """Fold statistics of one run: foreground means per frame, temporal metrics, speed and training time."""
    summaries = run.summaries
    metrics = {m: fold_stat(summaries, lambda s, m=m: s["by_frame"][m]["foreground_mean"]) for m, _ in METRICS}
    for key, _ in TEMPORAL:
        metrics[key] = fold_stat(summaries, lambda s, k=key: s["temporal"]["by_video"][k]["foreground_mean"])
    metrics[EMPTY_AS_ONE[0]] = FoldStat(jaccard_empty_as_one(run))
    units = sorted({str(s.get("hd95_unit", "?")) for s in summaries.values()})
    minutes = {int(k.rsplit("_", 1)[1]): v / 60.0 for k, v in run.seconds.items() if k.startswith("train_fold_")}
    return ModelStats(
        name=run.name,
        folds=run.folds,
        parameters=parameters,
        metrics=metrics,
        hd95_unit="/".join(units) if units else "?",
        temporal_skipped=_skip_reason(summaries),
        fps=fold_stat(summaries, lambda s: s["inference_timing"]["fps"]),
        train_minutes=FoldStat(minutes),
    )


def _millions(parameters: int | None) -> str:
    return "n/a" if parameters is None else f"{parameters / 1e6:.3f}"


def signed_text(stat: FoldStat, digits: int = 3) -> str:
    """``+mean ± sd`` of a difference (sign always shown); one value alone; ``n/a`` without values."""
    if not stat.values:
        return "n/a"
    sd = "" if stat.n == 1 else f" ± {stat.sd:.{digits}f}"
    return f"{stat.mean:+.{digits}f}{sd}"


def winner_sentence(stats: Sequence[ModelStats]) -> str:
    """Which model has the highest mean foreground Dice, by how much over the runner-up, and the paired difference."""
    ranked = sorted((s for s in stats if s.metrics["dice"].n), key=lambda s: -s.metrics["dice"].mean)
    if not ranked:
        return "No model has evaluated folds yet."
    best = ranked[0]
    if len(ranked) == 1:
        return f"Only **{best.name}** has evaluated folds (foreground Dice {best.metrics['dice'].text()})."
    runner = ranked[1]
    a, b = best.metrics["dice"], runner.metrics["dice"]
    paired = paired_difference(a, b)
    verb = "ties with" if a.mean == b.mean else "beats"
    text = (
        f"On foreground Dice (per frame, mean ± sd over folds) **{best.name}** {verb} the runner-up {runner.name}: "
        f"{a.text()} vs {b.text()}, a difference of means of {a.mean - b.mean:+.3f}"
    )
    if paired.n:
        better = sum(v > 0 for v in paired.values.values())
        text += f"; paired per fold {signed_text(paired)} ({best.name} better in {better}/{paired.n} shared folds)"
    return text + "."


def _rows(stats: Sequence[ModelStats]) -> list[list[str]]:
    rows = []
    for s in stats:
        folds = len(s.folds)
        cells = [s.name, _millions(s.parameters), str(folds)]
        cells += [s.metrics[m].text(3, folds) for m, _ in METRICS[:2]]
        empty_as_one = s.metrics[EMPTY_AS_ONE[0]]
        cells.append(empty_as_one.text(3, folds) if empty_as_one.n else "n/a")
        cells += [s.metrics[m].text(3, folds) for m, _ in METRICS[2:]]
        for key, _ in TEMPORAL:
            cells.append(s.metrics[key].text(3, folds) if s.metrics[key].n else "n/a")
        cells += [s.fps.text(1), s.train_minutes.text(1)]
        rows.append(cells)
    return rows


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def comparison_markdown(stats: Sequence[ModelStats], reference: str) -> str:
    """The summary table, the per-fold table, the winner sentence and the paired differences to ``reference``."""
    units = sorted({s.hd95_unit for s in stats if s.folds})
    header = ["model", "parameters (M)", "folds"] + [title for _, title in METRICS[:2]] + [EMPTY_AS_ONE[1]]
    header += [title for _, title in METRICS[2:-1]]
    header += [f"HD95 ({'/'.join(units) or '?'})"] + [f"temporal: {title}" for _, title in TEMPORAL]
    header += ["frames/s", "training min/fold"]
    lines = _table(header, _rows(stats))
    skipped = [f"{s.name}: {s.temporal_skipped}" for s in stats if s.folds and not s.metrics[TEMPORAL[0][0]].n]
    lines += [
        "",
        "Foreground means (classes other than background) of the per-frame metrics, then mean ± sd (n-1) over "
        "folds; Jaccard, both empty = 1 counts a frame where a class is absent from both masks as 1 (left out "
        "elsewhere). Temporal metrics per video; n/a where every case was skipped"
        + (f" ({'; '.join(skipped)})" if skipped else "")
        + ". frames/s: sliding-window forward on the evaluation device; training: wall minutes per fold.",
        "",
        winner_sentence(stats),
    ]
    all_folds = sorted({k for s in stats for k in s.folds})
    lines += ["", "### Per fold: foreground Dice / Jaccard", ""]
    rows = []
    for s in stats:
        dice, jaccard = s.metrics["dice"].values, s.metrics["jaccard"].values
        rows.append([s.name] + [_pair(dice.get(k), jaccard.get(k)) for k in all_folds])
    lines += _table(["model"] + [f"fold {k}" for k in all_folds], rows)
    lines += ["", f"### Paired per-fold differences: {reference} − other (folds are shared)", ""]
    by_name = {s.name: s for s in stats}
    rows = []
    for s in stats:
        if s.name == reference or reference not in by_name:
            continue
        cells = [f"{reference} − {s.name}"]
        for metric in ("dice", "jaccard"):
            diff = paired_difference(by_name[reference].metrics[metric], s.metrics[metric])
            cells.append(signed_text(diff))
        diff = paired_difference(by_name[reference].metrics["dice"], s.metrics["dice"])
        cells.append(f"{sum(v > 0 for v in diff.values.values())}/{diff.n}")
        rows.append(cells)
    lines += _table(["pair", "Dice diff. mean ± sd", "Jaccard diff. mean ± sd", "reference better (Dice)"], rows)
    return "\n".join(lines) + "\n"


def _pair(first: float | None, second: float | None) -> str:
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in (first, second))


def _csv_value(value: float | int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return str(value) if isinstance(value, int) else f"{value:.6f}"


def comparison_csv(stats: Sequence[ModelStats], reference: str) -> str:
    """One row per model: parameters, mean/sd/n of every column, per-fold Dice/Jaccard, paired Dice difference."""
    all_folds = sorted({k for s in stats for k in s.folds})
    by_name = {s.name: s for s in stats}
    rows = []
    for s in stats:
        row: dict[str, str] = {"model": s.name, "parameters": _csv_value(s.parameters), "folds": str(len(s.folds))}
        columns = {**s.metrics, "fps": s.fps, "train_minutes": s.train_minutes}
        for key, stat in columns.items():
            row.update(
                {f"{key}_mean": _csv_value(stat.mean), f"{key}_sd": _csv_value(stat.sd), f"{key}_n": str(stat.n)}
            )
        row["hd95_unit"] = s.hd95_unit
        for k in all_folds:
            row[f"dice_fold_{k}"] = _csv_value(s.metrics["dice"].values.get(k))
            row[f"jaccard_fold_{k}"] = _csv_value(s.metrics["jaccard"].values.get(k))
        if reference in by_name and s.name != reference:
            diff = paired_difference(by_name[reference].metrics["dice"], s.metrics["dice"])
        else:
            diff = FoldStat()
        row.update({"paired_dice_diff_mean": _csv_value(diff.mean), "paired_dice_diff_sd": _csv_value(diff.sd)})
        row["paired_dice_diff_n"] = str(diff.n)
        rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["model"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()

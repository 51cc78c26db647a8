"""Per-dataset results of one text-prompted model trained jointly on several datasets, over its folds.

A joint model is evaluated once per fold on every dataset's validation cases together; its case ids carry the
dataset (``carotid/<case>``, :mod:`vivim_monai.data.joint`), so each fold's ``metrics_per_frame.csv`` splits into
per-dataset means. ``scripts/prompt_sensitivity.py`` writes, per fold, one evaluation per prompt mode (``own``,
``other``, ``empty``); :func:`joint_report` turns the folds' ``own`` metrics and prompt drops into mean ± sd over folds.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from pathlib import Path
from typing import Sequence

from vivim_monai.data.joint import dataset_of_case
from vivim_monai.engines import PROMPT_MODES
from vivim_monai.experiments.tables import FoldStat, signed_text

__all__ = ["JOINT_METRICS", "joint_fold_results", "joint_report", "per_dataset_means"]

#: per-frame columns of the target class (two-class prompted layout) and their table titles
JOINT_METRICS = (("dice_target", "Dice"), ("jaccard_target", "Jaccard"), ("hd95_target", "HD95 (px)"))
SENSITIVITY_DIR = "prompt_sensitivity"


def per_dataset_means(
    per_frame_csv: str | os.PathLike, columns: Sequence[str]
) -> dict[str, dict[str, tuple[float, int]]]:
    """Per dataset and column: (mean over its frames, number of frames with a value), from one read of the file; NaN
    and empty cells are left out (e.g. HD95 where a mask is empty)."""
    values: dict[str, dict[str, list[float]]] = {}
    with open(per_frame_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            for column in columns:
                text = row.get(column)
                if text not in (None, "") and not math.isnan(float(text)):
                    values.setdefault(dataset_of_case(row["case_id"]), {}).setdefault(column, []).append(float(text))
    return {
        name: {column: (statistics.fmean(v), len(v)) for column, v in per_column.items()}
        for name, per_column in sorted(values.items())
    }


def joint_fold_results(run_dir: str | os.PathLike) -> dict[int, dict[str, dict[str, float]]]:
    """``{fold: {dataset: {metric or 'drop_other' / 'drop_empty': value}}}`` from every ``fold_<k>`` of ``run_dir``
    that has a prompt-sensitivity evaluation (the ``own`` mode is the model's normal evaluation)."""
    results: dict[int, dict[str, dict[str, float]]] = {}
    for fold_dir in sorted(Path(run_dir).glob("fold_*")):
        modes = fold_dir / SENSITIVITY_DIR
        if not all((modes / mode / "metrics_per_frame.csv").is_file() for mode in PROMPT_MODES):
            continue
        fold = int(fold_dir.name.split("_", 1)[1])
        columns = [column for column, _ in JOINT_METRICS]
        per_dataset: dict[str, dict[str, float]] = {}
        for name, per_column in per_dataset_means(modes / "own" / "metrics_per_frame.csv", columns).items():
            per_dataset[name] = {column: mean for column, (mean, _) in per_column.items()}
            if "dice_target" in per_column:
                per_dataset[name]["frames"] = per_column["dice_target"][1]
        for mode in PROMPT_MODES[1:]:
            for name, per_column in per_dataset_means(modes / mode / "metrics_per_frame.csv", ["dice_target"]).items():
                if "dice_target" in per_dataset.get(name, {}):
                    per_dataset[name][f"drop_{mode}"] = per_dataset[name]["dice_target"] - per_column["dice_target"][0]
        results[fold] = per_dataset
    return results


def _stat(results: dict[int, dict[str, dict[str, float]]], dataset: str, key: str) -> FoldStat:
    return FoldStat({f: r[dataset][key] for f, r in results.items() if key in r.get(dataset, {})})


def _drop_text(stat: FoldStat) -> str:
    worse = sum(v > 0 for v in stat.values.values())
    return signed_text(stat) + (f" (worse in {worse}/{stat.n})" if stat.values else "")


def joint_report(run_dir: str | os.PathLike) -> str:
    """Markdown: per dataset, the joint model's metrics and prompt drops as mean ± sd over folds, and per fold."""
    results = joint_fold_results(run_dir)
    if not results:
        raise FileNotFoundError(f"{run_dir}: no fold_<k>/{SENSITIVITY_DIR}/{{own,other,empty}} evaluations")
    datasets = sorted({name for per_dataset in results.values() for name in per_dataset})
    titles = [title for _, title in JOINT_METRICS]
    lines = [
        f"Folds: {', '.join(str(f) for f in sorted(results))}; right prompt (mean ± sd over the folds that hold the "
        "dataset); a drop is Dice with the right prompt minus Dice with the other prompt.",
        "",
        "| dataset | folds | " + " | ".join(titles) + " | drop, another dataset's prompt | drop, empty prompt |",
        "|---|---|" + "---|" * (len(titles) + 2),
    ]
    for name in datasets:
        stats = [_stat(results, name, column) for column, _ in JOINT_METRICS]
        drops = [_drop_text(_stat(results, name, f"drop_{mode}")) for mode in PROMPT_MODES[1:]]
        lines.append(
            f"| {name} | {stats[0].n} | " + " | ".join(s.text() for s in stats) + f" | {drops[0]} | {drops[1]} |"
        )
    lines += ["", "| fold | dataset | frames | " + " | ".join(titles) + " | drop (other) | drop (empty) |"]
    lines.append("|---|---|---|" + "---|" * (len(titles) + 2))
    for fold, per_dataset in sorted(results.items()):
        for name, row in sorted(per_dataset.items()):
            cells = [f"{row[c]:.3f}" if c in row else "n/a" for c, _ in JOINT_METRICS]
            drops = [f"{row[k]:+.3f}" if k in row else "n/a" for k in ("drop_other", "drop_empty")]
            lines.append(f"| {fold} | {name} | {int(row.get('frames', 0))} | " + " | ".join(cells + drops) + " |")
    return "\n".join(lines) + "\n"

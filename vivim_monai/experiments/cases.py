"""Where one model beats another: per-case and per-frame paired Dice differences over the validation folds.

Used for the with-time vs without-time pair (Vivim vs the same network with ``mamba_depths = 0``): the fold means say
who wins, this says on which cases and how many frames, from each fold's ``eval/metrics_per_video.csv`` and
``eval/metrics_per_frame.csv`` (foreground mean Dice; frames where it is undefined are left out).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from vivim_monai.experiments.runs import ModelRun

__all__ = ["jaccard_empty_as_one", "paired_cases_markdown"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _foreground_frame_mean(row: dict[str, str], metric: str, absent: float = math.nan) -> float:
    """Mean of ``<metric>_<class>`` over the foreground classes of one ``metrics_per_frame.csv`` row; a class absent
    from both masks (NaN) counts ``absent``, left out when that is NaN."""
    values = [float(v) for k, v in row.items() if k.startswith(f"{metric}_") and k != f"{metric}_background"]
    values = [absent if math.isnan(v) else v for v in values]
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def jaccard_empty_as_one(run: ModelRun) -> dict[int, float]:
    """Per evaluated fold with an ``eval/metrics_per_frame.csv``: the mean over its frames of the foreground Jaccard
    with a class absent from both masks of a frame counted as 1 instead of left out. Datasets where many frames show
    no structure (BAGLS: the closed glottis) state IoU targets in this convention, which rewards predicting nothing
    there; the summaries' own Jaccard leaves such frames out."""
    means = {}
    for fold in sorted(run.summaries):
        path = run.fold_dirs[fold] / "eval" / "metrics_per_frame.csv"
        if not path.is_file():
            continue
        frames = [_foreground_frame_mean(row, "jaccard", absent=1.0) for row in _rows(path)]
        frames = [v for v in frames if not math.isnan(v)]
        if frames:
            means[fold] = sum(frames) / len(frames)
    return means


def _case_table(run: ModelRun, fold: int) -> dict[str, tuple[int, float]]:
    path = run.fold_dirs[fold] / "eval" / "metrics_per_video.csv"
    return {r["case_id"]: (int(r["n_frames"]), float(r["dice_fg_mean"])) for r in _rows(path)} if path.is_file() else {}


def _frame_table(run: ModelRun, fold: int) -> dict[tuple[str, str], float]:
    path = run.fold_dirs[fold] / "eval" / "metrics_per_frame.csv"
    return (
        {(r["case_id"], r["frame"]): _foreground_frame_mean(r, "dice") for r in _rows(path)} if path.is_file() else {}
    )


def paired_cases_markdown(first: ModelRun, second: ModelRun, tolerance: float = 0.005) -> str:
    """Per validation case: Dice of ``first`` and ``second``, the difference, and the frames where ``first`` is
    better / worse by more than ``tolerance`` (the rest count as ties)."""
    lines = [
        f"### Per case: {first.name} − {second.name} (foreground Dice, validation folds)",
        "",
        f"| fold | case | frames | {first.name} | {second.name} | difference | frames better / tied / worse |",
        "|---|---|---|---|---|---|---|",
    ]
    totals = [0, 0, 0]
    for fold in sorted(set(first.summaries) & set(second.summaries)):
        cases_a, cases_b = _case_table(first, fold), _case_table(second, fold)
        frames_a, frames_b = _frame_table(first, fold), _frame_table(second, fold)
        for case in sorted(set(cases_a) & set(cases_b)):
            (frames, dice_a), (_, dice_b) = cases_a[case], cases_b[case]
            counts = [0, 0, 0]
            for key in (k for k in frames_a if k[0] == case and k in frames_b):
                diff = frames_a[key] - frames_b[key]
                if not math.isnan(diff):
                    counts[0 if diff > tolerance else 2 if diff < -tolerance else 1] += 1
            totals = [t + c for t, c in zip(totals, counts)]
            lines.append(
                f"| {fold} | {case} | {frames} | {dice_a:.3f} | {dice_b:.3f} | {dice_a - dice_b:+.3f} | "
                + " / ".join(map(str, counts))
                + " |"
            )
    lines += ["", f"All frames: {first.name} better in {totals[0]}, tied (±{tolerance}) in {totals[1]}, worse in "]
    lines[-1] += f"{totals[2]}."
    return "\n".join(lines) + "\n"

"""Stratified group k-fold splits of datalist entries, choosing the most balanced split among seeds.

Groups (patient / clinical case / acquisition) never straddle folds. Each entry's stratum joins a user-chosen
attribute (e.g. ``histological``), its frame-count quantile bin and, per foreground class, a bin of the fraction of
its frames where the class is present — the key of the ovarian fork's ``multiclass_StratKFold.py``. scikit-learn's
``StratifiedGroupKFold`` assigns the groups; among ``seeds`` the split with the lowest imbalance wins, where the
imbalance sums, over folds and foreground classes, ``|presence ratio − overall ratio|`` of the validation and the
training side, plus each fold's deviation from an equal share of frames. When the strata are too fine for the
number of folds (every stratum smaller than ``n_folds``), components are dropped — frame bins first, then class
bins, then the attribute — and the report says which were used.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

__all__ = ["assign_folds", "quantile_bins"]


def quantile_bins(values: Sequence[float], bins: int) -> np.ndarray:
    """Bin index of each value among ``bins`` quantile bins (ties share a bin; constant input -> one bin)."""
    values = np.asarray(values, dtype=float)
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if len(values) else np.array([])
    return np.digitize(values, edges, right=True)


def _presence(entries: Sequence[dict[str, Any]]) -> np.ndarray | None:
    """(entries, foreground classes) fraction of frames with each class present, or None without label scans."""
    if not all("class_frames" in e and e.get("n_frames") for e in entries):
        return None
    return np.array([[c / e["n_frames"] for c in e["class_frames"][1:]] for e in entries], dtype=float)


def _strata(entries: Sequence[dict[str, Any]], components: Sequence[str], attribute: str | None) -> list[str]:
    frames = quantile_bins([e.get("n_frames", 0) for e in entries], 4)
    presence = _presence(entries)
    keys = []
    for index, entry in enumerate(entries):
        parts = []
        if "attribute" in components:
            parts.append(str(entry.get(attribute)))
        if "classes" in components and presence is not None:
            parts += [str(b) for b in (quantile_bins(presence[:, c], 2)[index] for c in range(presence.shape[1]))]
        if "frames" in components:
            parts.append(str(frames[index]))
        keys.append("|".join(parts) or "all")
    return keys


def _imbalance(entries: Sequence[dict[str, Any]], folds: np.ndarray, n_folds: int) -> float:
    frames = np.array([e.get("n_frames", 1) for e in entries], dtype=float)
    score = float(np.abs(np.bincount(folds, weights=frames, minlength=n_folds) / frames.sum() - 1.0 / n_folds).sum())
    if "class_frames" in entries[0]:
        present = np.array([e["class_frames"][1:] for e in entries], dtype=float)  # frames with each class
        overall = present.sum(0) / frames.sum()
        for k in range(n_folds):
            for side in (folds == k, folds != k):
                if frames[side].sum():
                    score += float(np.abs(present[side].sum(0) / frames[side].sum() - overall).sum())
    return score


def assign_folds(
    entries: Sequence[dict[str, Any]],
    n_folds: int = 5,
    group_key: str = "group",
    attribute: str | None = None,
    seeds: Sequence[int] = range(42, 52),
) -> tuple[list[int], dict[str, Any]]:
    """Fold index per entry and a report (seed, imbalance, strata used, per-fold counts).

    Args:
        entries: datalist entries; ``n_frames`` and ``class_frames`` (from ``discover_cases(scan_labels=True)``)
            enable frame-count and class-presence strata.
        n_folds: number of folds (at least 2, at most the number of groups).
        group_key: entry key naming the group that must stay in one fold.
        attribute: optional entry key stratified on (e.g. ``"histological"``).
        seeds: shuffling seeds tried; the most balanced split wins (ties: the first seed).
    """
    groups = [str(e.get(group_key, e.get("case_id"))) for e in entries]
    n_groups = len(set(groups))
    if n_folds < 2 or n_folds > n_groups:
        raise ValueError(f"n_folds must be in 2..{n_groups} (the number of distinct {group_key!r}), got {n_folds}")
    if attribute is not None and any(attribute not in e for e in entries):
        missing = next(e.get("case_id") for e in entries if attribute not in e)
        raise ValueError(f"stratification attribute {attribute!r} missing from entry {missing!r}")
    components = ["attribute", "classes", "frames"] if attribute else ["classes", "frames"]
    strata = _strata(entries, components, attribute)
    while components and np.unique(strata, return_counts=True)[1].max() < n_folds:  # too fine for sklearn
        components.pop()
        strata = _strata(entries, components, attribute)
    best: tuple[float, int, np.ndarray] | None = None
    for seed in seeds:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = np.zeros(len(entries), dtype=int)
        with warnings.catch_warnings():  # small strata only weaken stratification; the report shows the balance
            warnings.simplefilter("ignore", UserWarning)
            for k, (_, val) in enumerate(splitter.split(np.zeros(len(entries)), strata, groups)):
                folds[val] = k
        score = _imbalance(entries, folds, n_folds)
        if best is None or score < best[0] - 1e-12:
            best = (score, seed, folds)
    score, seed, folds = best
    report = {
        "n_folds": n_folds,
        "seed": seed,
        "imbalance": round(score, 6),
        "strata": list(components) or ["none"],
        "group_key": group_key,
        "folds": [_fold_summary(entries, folds == k) for k in range(n_folds)],
    }
    return folds.tolist(), report


def _fold_summary(entries: Sequence[dict[str, Any]], selected: np.ndarray) -> dict[str, Any]:
    chosen = [e for e, s in zip(entries, selected) if s]
    summary: dict[str, Any] = {
        "n_entries": len(chosen),
        "n_groups": len({str(e.get("group")) for e in chosen}),
        "n_frames": int(sum(e.get("n_frames", 0) for e in chosen)),
    }
    if chosen and "class_frames" in chosen[0]:
        frames = max(summary["n_frames"], 1)
        summary["class_presence"] = [
            round(sum(e["class_frames"][c] for e in chosen) / frames, 4) for c in range(len(chosen[0]["class_frames"]))
        ]
    return summary

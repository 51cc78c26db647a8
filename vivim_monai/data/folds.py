"""Stratified group k-fold splits of datalist entries, choosing the most balanced split among seeds.

Groups (patient / clinical case / acquisition) never straddle folds. Each entry's stratum joins a user-chosen
attribute (e.g. ``histological``), its frame-count quantile bin and, per foreground class, a bin of the fraction of
its frames where the class is present — the key of the ovarian fork's ``multiclass_StratKFold.py``. scikit-learn's
``StratifiedGroupKFold`` assigns the groups; among ``seeds`` the split with the lowest imbalance wins, where the
imbalance sums, over folds and foreground classes, ``|presence ratio − overall ratio|`` of the validation and the
training side, plus each fold's deviation from an equal share of frames. When the strata are too fine for the
number of folds (every stratum smaller than ``n_folds``), components are dropped — frame bins first, then class
bins, then the attribute — and the report says which were used.

Temporal blocks (:func:`assign_temporal_blocks`) are the alternative for data with too few videos to split by
group (VTUS: one developer video): every video is cut into ``n_blocks`` contiguous blocks, block k validates fold k,
and the training side of fold k drops the ``guard`` frames of the neighbouring blocks that touch block k, since
consecutive frames are near-duplicates (:func:`~vivim_monai.data.load_datalist` does the trimming).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from vivim_monai.data.datalist import slice_frames

__all__ = ["assign_folds", "assign_temporal_blocks", "block_sizes", "quantile_bins", "temporal_block_report"]


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
        "folds": [_fold_summary(entries, groups, folds == k) for k in range(n_folds)],
    }
    return folds.tolist(), report


def _fold_summary(entries: Sequence[dict[str, Any]], groups: Sequence[str], selected: np.ndarray) -> dict[str, Any]:
    chosen = [e for e, s in zip(entries, selected) if s]
    summary: dict[str, Any] = {
        "n_entries": len(chosen),
        "n_groups": len({g for g, s in zip(groups, selected) if s}),
        "n_frames": int(sum(e.get("n_frames", 0) for e in chosen)),
    }
    if chosen and all("class_frames" in e for e in chosen):
        frames = max(summary["n_frames"], 1)
        summary["class_presence"] = [
            round(sum(e["class_frames"][c] for e in chosen) / frames, 4) for c in range(len(chosen[0]["class_frames"]))
        ]
    return summary


def block_sizes(n_frames: int, n_blocks: int) -> list[int]:
    """Frame counts of ``n_blocks`` contiguous blocks: ``n_frames // n_blocks`` each, the remainder going one frame
    apiece to the last blocks (91 frames, 3 blocks: 30, 30, 31; 20 frames: 6, 7, 7)."""
    base, extra = divmod(n_frames, n_blocks)
    return [base + (k >= n_blocks - extra) for k in range(n_blocks)]


def assign_temporal_blocks(entries: Sequence[dict[str, Any]], n_blocks: int, guard: int = 3) -> list[dict[str, Any]]:
    """Split every time-ordered video entry into ``n_blocks`` contiguous block entries; block k is fold k's validation.

    Each block is a copy of its video's entry with the per-frame lists sliced (:func:`slice_frames`), ``case_id``
    ``"<case_id>#block<k>"``, the same ``group``, and ``fold`` = ``block`` = k, ``n_blocks`` and ``temporal_guard`` =
    ``guard`` (the frames next to block k that fold k's training side leaves out). Blocks of different videos are
    separate entries, never merged.

    Args:
        entries: datalist entries whose ``image`` is a list of frames in time order.
        n_blocks: blocks per video = number of folds (at least 2).
        guard: frames dropped on each side of the validation block from the training side (at least 0).
    """
    if n_blocks < 2 or guard < 0:
        raise ValueError(f"need n_blocks >= 2 and guard >= 0, got n_blocks={n_blocks}, guard={guard}")
    blocks = []
    for entry in entries:
        name = entry.get("case_id")
        if "block" in entry:
            raise ValueError(f"entry {name!r} is already temporal block {entry['block']}")
        if not isinstance(entry.get("image"), list) or entry.get("frame_order", "temporal") != "temporal":
            raise ValueError(f"entry {name!r}: temporal blocks need a list of frames in time order")
        n_frames, needed = len(entry["image"]), n_blocks * (2 * guard + 1)
        if n_frames < needed:
            raise ValueError(
                f"entry {name!r} has {n_frames} frames; {n_blocks} blocks with a guard of {guard} need at least "
                f"{needed} (n_blocks * (2 * guard + 1)): use fewer blocks or a smaller guard"
            )
        start = 0
        for k, size in enumerate(block_sizes(n_frames, n_blocks)):
            block = slice_frames(entry, start, start + size)
            block.update(case_id=f"{name}#block{k}", fold=k, block=k, n_blocks=n_blocks, temporal_guard=guard)
            blocks.append(block)
            start += size
    return blocks


def temporal_block_report(blocks: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Report of :func:`assign_temporal_blocks` (a datalist's ``"folds"``): method, sizes, validation side per fold."""
    if not blocks:
        raise ValueError("no temporal blocks to report on")
    n_blocks, guard = blocks[0]["n_blocks"], blocks[0]["temporal_guard"]
    folds = np.array([b["fold"] for b in blocks])
    groups = [str(b.get("group", b["case_id"])) for b in blocks]
    return {
        "method": "temporal_blocks",
        "n_folds": n_blocks,
        "n_blocks": n_blocks,
        "guard": guard,
        "n_videos": len({b["case_id"].rsplit("#block", 1)[0] for b in blocks}),
        "folds": [_fold_summary(blocks, groups, folds == k) for k in range(n_blocks)],
    }

"""The few-shot evaluation protocol (model card, *Your own cine*): on each developer cine, choose frames as a user
would, run each prompted method, and score every other frame.

Frames: the frame with the largest ground-truth mask first, then ``k - 1`` more spread evenly over the cine
(:func:`choose_frames`); the box prompt is the ground-truth box of that first frame. Scores are per-frame foreground
Dice, Jaccard (also with frames empty in both masks counted as 1) and HD95, on every frame that was neither labelled
nor prompted, then averaged per cine. Nothing is trained on any frame it is scored on, and every adaptation starts
from ImageNet weights (never from a model trained on the developer cines).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vivim_monai.fewshot.adapt import AdaptConfig
from vivim_monai.fewshot.prompts import UNLABELLED, BoxPrompt, box_of_mask
from vivim_monai.fewshot.segment import TRUST_TRACK_REACH, label_boxes, segment_with_prompts
from vivim_monai.fewshot.temporal import TEMPORAL_STEPS
from vivim_monai.fewshot.tracking import FrameEmbeddings, track_boxes
from vivim_monai.metrics.segmentation import per_frame_metrics
from vivim_monai.networks import LiteMedSAM
from vivim_monai.utils import atomic_write

__all__ = [
    "EVALUATED_METHODS",
    "choose_frames",
    "evaluate_case",
    "report_markdown",
    "score_frames",
    "summarise_results",
]

#: Method names of the protocol: box paths (``box:<method>``) and k-shot adaptation (``k<k>``; with temporal
#: smoothing of the predictions, ``k<k>+time``; with the tracker's masks of unlabelled frames as pseudo-labels,
#: ``k<k>+track``; followed by a TemporalFlexibleUNet started from the adapted weights, ``k<k>+temporalnet``).
EVALUATED_METHODS = (
    "box:track",
    "box:adapt",
    "box:track+adapt",
    "k1",
    "k3",
    "k5",
    "k1+time",
    "k3+time",
    "k5+time",
    "k1+track",
    "k3+track",
    "k1+temporalnet",
    "k3+temporalnet",
)


def choose_frames(label: np.ndarray, k: int) -> list[int]:
    """``k`` frames of an ``(H, W, T)`` ground truth: the largest mask first, then the others spread evenly (the
    middles of ``k`` equal shares of the cine, the one nearest the first frame replaced by it)."""
    count = label.shape[-1]
    if not 1 <= k <= count:
        raise ValueError(f"cannot choose {k} of {count} frames")
    largest = int((label > 0).reshape(-1, count).sum(0).argmax())
    spread = [int((i + 0.5) * count / k) for i in range(k)]
    nearest = min(range(k), key=lambda i: abs(spread[i] - largest))
    spread[nearest] = largest
    rest = [f for f in spread if f != largest]
    return [largest] + rest


def score_frames(pred: np.ndarray, truth: np.ndarray, frames: Sequence[int], spacing: Any = None) -> dict[str, Any]:
    """Foreground Dice, Jaccard, Jaccard with both-empty frames as 1, and HD95 of ``frames`` (per frame and mean)."""
    frames = list(frames)
    metrics = per_frame_metrics(pred[..., frames][None], truth[..., frames][None], 2, spacing)
    dice, jaccard, hd95 = metrics["dice"][:, 1], metrics["jaccard"][:, 1], metrics["hd95"][:, 1]
    jaccard_empty_one = np.where(np.isnan(jaccard), 1.0, jaccard)

    def mean(values: np.ndarray) -> float | None:
        return float(np.nanmean(values)) if np.isfinite(values).any() else None

    return {
        "frames": frames,
        "dice": mean(dice),
        "jaccard": mean(jaccard),
        "jaccard_empty_as_one": mean(jaccard_empty_one),
        "hd95": mean(hd95),
        "dice_per_frame": [None if np.isnan(v) else round(float(v), 4) for v in dice],
    }


def evaluate_case(
    case_id: str,
    cine: torch.Tensor,
    truth: np.ndarray,
    output: Path,
    methods: Sequence[str] = EVALUATED_METHODS,
    temporal: bool = True,
    config: AdaptConfig = AdaptConfig(),
    temporal_sigma: float = 1.0,
    spacing: Any = None,
    medsam: LiteMedSAM | None = None,
) -> list[dict[str, Any]]:
    """Run ``methods`` on one cine, writing ``<output>/<case>/<method>.json`` each (a finished one is read back, so a
    killed run resumes); tracking and temporal methods are skipped when the cine's frame order is not temporal."""
    truth = (np.asarray(truth) > 0).astype(np.uint8)
    folder = output / case_id.replace("/", "_")
    results = []
    # shared by the box methods; float32 so that the tables do not depend on the CPU's bfloat16 support
    embeddings = FrameEmbeddings(medsam or LiteMedSAM().eval(), cine, precision="fp32")
    first = choose_frames(truth, 1)[0]
    box = BoxPrompt(first, box_of_mask(truth[..., first]))  # type: ignore[arg-type]
    every = range(truth.shape[-1])

    def save(method: str, started: float, pred: np.ndarray, scored: list[int], extra: dict[str, Any]) -> None:
        record = {
            "case_id": case_id,
            "method": method,
            "seconds": time.perf_counter() - started,
            "box_frame": first,
            **score_frames(pred, truth, scored, spacing),
            **extra,
        }
        path = folder / f"{method.replace(':', '_')}.json"
        atomic_write(path, lambda name: Path(name).write_text(json.dumps(record, indent=1)))
        print(f"{case_id} {method}: Dice {record['dice']}, {record['seconds']:.0f} s", flush=True)

    def run(method: str) -> None:
        started = time.perf_counter()
        if method.startswith("box:"):
            result = segment_with_prompts(
                cine, [box], method=method[4:], config=config, source=case_id, embeddings=embeddings
            )
            lost = [t for t, s in enumerate(result.status) if s == "lost"]
            extra = {"lost_frames": lost, "seconds_parts": result.seconds}
            save(method, started, result.labels, [t for t in every if t != first], extra)
            return
        k = int(method[1:].split("+")[0])
        frames = choose_frames(truth, k)
        scored = [t for t in every if t not in frames]
        label = np.full_like(truth, UNLABELLED)
        label[..., frames] = truth[..., frames]
        way = "track+adapt" if method.endswith("+track") else "adapt"
        recipe = replace(config, temporal_steps=TEMPORAL_STEPS) if method.endswith("+temporalnet") else config
        result = segment_with_prompts(
            cine, label=label, method=way, config=recipe, source=case_id, embeddings=embeddings
        )
        extra = {"labelled": frames, "seconds_parts": result.seconds}
        if way == "track+adapt":
            extra["track_lost_frames"] = result.lost
        save(method, started, result.labels, scored, extra)
        if method == f"k{k}" and f"{method}+time" in methods and temporal:  # the same network, predictions smoothed
            again = time.perf_counter()
            probabilities = result.adapter.predict(cine, temporal_sigma=temporal_sigma)  # type: ignore[union-attr]
            parts = {**result.seconds, "temporal_predict": time.perf_counter() - again}
            extra = {"labelled": frames, "seconds_parts": parts, "temporal_sigma": temporal_sigma}
            save(f"{method}+time", started, probabilities.argmax(0).astype(np.uint8), scored, extra)

    for method in methods:
        time_ordered = method in ("box:track", "box:track+adapt") or method.endswith(
            ("+time", "+track", "+temporalnet")
        )
        if not temporal and time_ordered:
            continue
        path = folder / f"{method.replace(':', '_')}.json"
        if not path.is_file():
            # "k<k>+time" is written with "k<k>" (same network); it is missing only when "k<k>" came from an
            # earlier, killed run: then both are made again
            run(method[: -len("+time")] if method.endswith("+time") else method)
        record = json.loads(path.read_text())
        if method.endswith("+track") and "track_lost_frames" not in record:  # a record of an earlier version
            label = np.full_like(truth, UNLABELLED)
            label[..., record["labelled"]] = truth[..., record["labelled"]]
            tracked = track_boxes(cine, label_boxes(label, record["labelled"]), embeddings=embeddings)
            record["track_lost_frames"] = tracked.frames_with("lost")
            atomic_write(path, lambda name: Path(name).write_text(json.dumps(record, indent=1)))
        results.append(record)
    return results


def auto_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``method="auto"`` does, per cine: with k labelled frames the ``k<k>+track`` record where the tracks from the
    labelled frames reached ``TRUST_TRACK_REACH`` of the frames, else the ``k<k>`` one; with the box alone
    ``box:track+adapt`` where the ``box:track`` run's track reached it, else ``box:adapt``. Cines without the records
    that decide are left out (auto's result there is not known)."""
    found = {(r["case_id"], r["method"]): r for r in records}
    out = []
    for (case, method), record in found.items():
        if method == "box:track":
            tracked, adapted = found.get((case, "box:track+adapt")), found.get((case, "box:adapt"))
            if tracked is None or adapted is None:
                continue
            reached = 1 - len(record["lost_frames"]) / (len(record["frames"]) + 1)  # the boxed frame is not scored
            chosen = tracked if reached >= TRUST_TRACK_REACH else adapted
            out.append({**chosen, "method": "box auto", "auto_chose": chosen["method"]})
            continue
        if not (method.startswith("k") and method[1:].isdigit()):
            continue
        tracked = found.get((case, f"{method}+track"))
        if tracked is None or "track_lost_frames" not in tracked:
            continue
        count = len(tracked["frames"]) + len(tracked["labelled"])
        trust = 1 - len(tracked["track_lost_frames"]) / count >= TRUST_TRACK_REACH
        chosen = tracked if trust else record
        out.append({**chosen, "method": f"{method} auto", "auto_chose": chosen["method"]})
    return out


def summarise_results(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± sd over cines per method of Dice, Jaccard (both conventions), HD95, lost frames and seconds."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        summary: dict[str, Any] = {"cines": len(rows)}
        for key in ("dice", "jaccard", "jaccard_empty_as_one", "hd95", "seconds"):
            values = np.array([r[key] for r in rows if r.get(key) is not None], float)
            summary[key] = (float(values.mean()), float(values.std())) if values.size else None
        summary["lost_frames"] = sum(len(r.get("lost_frames", [])) for r in rows)
        summary["scored_frames"] = sum(len(r["frames"]) for r in rows)
        summary["min_dice"] = min((r["dice"] for r in rows if r["dice"] is not None), default=None)
        out[method] = summary
    return out


def report_markdown(records_by_dataset: dict[str, Sequence[dict[str, Any]]]) -> str:
    """The model card's table: one row per dataset and method, mean ± sd over cines."""

    def cell(value: Any, digits: int = 3) -> str:
        return "–" if value is None else f"{value[0]:.{digits}f} ± {value[1]:.{digits}f}"

    lines = [
        "| data | method | cines | Dice | Jaccard | Jaccard, empty = 1 | HD95 px | min cine Dice | lost frames "
        "| s per cine |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset, records in records_by_dataset.items():
        for method, s in summarise_results(records).items():
            lost = f"{s['lost_frames']} / {s['scored_frames']}"
            minimum = "–" if s["min_dice"] is None else f"{s['min_dice']:.3f}"
            seconds = "–" if s["seconds"] is None else f"{s['seconds'][0]:.0f}"
            lines.append(
                f"| {dataset} | {method} | {s['cines']} | {cell(s['dice'])} | {cell(s['jaccard'])} | "
                f"{cell(s['jaccard_empty_as_one'])} | {cell(s['hd95'], 1)} | {minimum} | {lost} | {seconds} |"
            )
    return "\n".join(lines) + "\n"


def per_cine_markdown(records: Sequence[dict[str, Any]]) -> str:
    """Dice of every cine (rows) under every method (columns), lost frames in brackets where a track stopped."""
    methods = list(dict.fromkeys(r["method"] for r in records))
    cines = list(dict.fromkeys(r["case_id"] for r in records))
    found = {(r["case_id"], r["method"]): r for r in records}
    lines = ["| cine | frames | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for cine in cines:
        cells = []
        for method in methods:
            record = found.get((cine, method))
            if record is None or record["dice"] is None:
                cells.append("–")
                continue
            lost = len(record.get("lost_frames", []))
            cells.append(f"{record['dice']:.3f}" + (f" ({lost} lost)" if lost else ""))
        frames = max(len(r["frames"]) + len(r.get("labelled", [0])) for r in records if r["case_id"] == cine)
        lines.append(f"| {cine} | {frames} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

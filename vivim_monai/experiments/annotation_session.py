"""A scripted annotation session over MONAI Label's HTTP API: a simulated user turns one box into a labelled cine.

Round 1: the cine goes into the datastore and the interactive model gets the ground-truth box of the frame with the
largest mask (the frame a user would box: :func:`~vivim_monai.fewshot.evaluation.choose_frames`). Each later round:
the user corrects the frame the current result gets most wrong (lowest Dice among the frames not yet corrected) by
saving its ground-truth label through the datastore (frames not corrected are 255 in the saved label: the
partial-label convention), and asks again with the same box. After every round: Dice of the whole cine (mean over
frames, frames empty in both result and truth left out) and the wall time of each step (upload, inference with the
server's own breakdown, label save). Standard library and numpy/nibabel only, so it runs beside any server.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from vivim_monai.fewshot.evaluation import choose_frames, score_frames
from vivim_monai.fewshot.prompts import UNLABELLED, box_of_mask
from vivim_monai.utils import monailabel_client as client

__all__ = ["run_session", "worst_frame", "write_volume"]


def write_volume(array: np.ndarray, path: Path) -> Path:
    """An ``(H, W, T)`` array as NIfTI with an identity affine (index order rows, columns, frames, as the bundle
    reads volumes)."""
    nib.save(nib.Nifti1Image(np.ascontiguousarray(array), np.eye(4)), str(path))
    return path


def worst_frame(pred: np.ndarray, truth: np.ndarray, skip: Sequence[int]) -> int | None:
    """The frame of lowest Dice between ``pred`` and ``truth`` ``(H, W, T)``, among frames not in ``skip`` where
    either holds foreground; None when every such frame is perfect or skipped."""
    scores = score_frames(pred, truth, range(truth.shape[-1]))["dice_per_frame"]
    candidates = [(d, t) for t, d in enumerate(scores) if d is not None and t not in skip and d < 1.0]
    return min(candidates)[1] if candidates else None


def run_session(
    url: str,
    model: str,
    cine: np.ndarray,
    truth: np.ndarray,
    image_id: str,
    rounds: int = 3,
    params: dict[str, Any] | None = None,
    timeout: float = 900.0,
) -> list[dict[str, Any]]:
    """Run the session on an ``(H, W, T)`` uint8 ``cine`` with its ``(H, W, T)`` binary ``truth`` (uploaded as
    ``<image_id>.nii.gz``); returns one record per round (Dice, worst frame, seconds per step, the server's answer)."""
    truth = (np.asarray(truth) > 0).astype(np.uint8)
    boxed = choose_frames(truth, 1)[0]
    box = [boxed, *(float(v) for v in box_of_mask(truth[..., boxed]))]  # type: ignore[union-attr]
    request = {"boxes": [box], **(params or {})}
    corrected: list[int] = []
    records = []
    with tempfile.TemporaryDirectory(prefix="annotation_session_") as folder:
        work = Path(folder)
        started = time.perf_counter()
        client.upload_image(url, image_id, write_volume(cine, work / f"{image_id}.nii.gz"), timeout)
        upload = time.perf_counter() - started
        for number in range(1, rounds + 1):
            began = time.perf_counter()
            saving = 0.0
            if number > 1:
                partial = np.full_like(truth, UNLABELLED)
                partial[..., corrected] = truth[..., corrected]
                client.save_label(
                    url, image_id, write_volume(partial, work / f"{image_id}_label.nii.gz"), timeout=timeout
                )
                saving = time.perf_counter() - began
            label, result, seconds = client.request_inference(
                url, model, params=request, image_id=image_id, timeout=timeout
            )
            if label is None:
                raise RuntimeError(f"round {number}: the server returned no label: {result}")
            (work / "answer.nii.gz").write_bytes(label)
            answer = np.asarray(nib.load(work / "answer.nii.gz").dataobj)
            if answer.shape != truth.shape:
                raise RuntimeError(f"round {number}: label {answer.shape} for a cine of {truth.shape}")
            scores = score_frames(answer, truth, range(truth.shape[-1]))
            worst = worst_frame(answer, truth, corrected + [boxed])
            records.append(
                {
                    "round": number,
                    "prompt": {"box": box} if number == 1 else {"box": box, "corrected_frames": list(corrected)},
                    "dice": scores["dice"],
                    "jaccard": scores["jaccard"],
                    "worst_frame": worst,
                    "worst_frame_dice": None if worst is None else scores["dice_per_frame"][worst],
                    "seconds": {
                        "upload": upload if number == 1 else saving,
                        "inference": seconds,
                        "round": time.perf_counter() - began + (upload if number == 1 else 0.0),
                    },
                    "server": {k: result.get(k) for k in ("latencies", "method", "trained_frames", "status_counts")},
                }
            )
            if worst is not None:
                corrected.append(worst)
    return records

"""The annotation loop's logic (MONAI Label's interactive model and train task call it): clicks and SAM2-style ROIs as
box prompts, embeddings kept between rounds, saved corrections used, training written atomically."""

from __future__ import annotations

from dataclasses import asdict, replace

import numpy as np
import pytest

from tests.test_fewshot import TINY, BrightRegionSAM, T, disk_cine
from vivim_monai.experiments.annotation_session import worst_frame
from vivim_monai.fewshot import UNLABELLED, BoxPrompt, PromptError
from vivim_monai.fewshot.annotation import (
    InteractiveCineModel,
    box_from_roi,
    boxes_from_clicks,
    train_on_labelled_cines,
)
from vivim_monai.fewshot.evaluation import score_frames

RECIPE = asdict(TINY)


def test_clicks_of_a_frame_are_its_extreme_points():
    clicks = [[30, 10, 4], [18, 22, 4], [42, 25, 4], [30, 34, 4], [5, 6, 7], [9, 12, 7]]
    assert boxes_from_clicks(clicks) == [BoxPrompt(4, (10.0, 18.0, 34.0, 42.0)), BoxPrompt(7, (6.0, 5.0, 12.0, 9.0))]
    assert boxes_from_clicks(None) == []


@pytest.mark.parametrize(
    "clicks, message",
    [
        ([[30, 10, 4]], "one click on frame 4"),
        ([[30, 10, 4], [30, 20, 4]], "lie on one line"),
        ([[30, 10]], r"point 0 \[30, 10\] is not \[row, column, frame\]"),
        ([[30, 10, 2.5], [1, 1, 2.5]], "is not"),
        ([["a", 1, 1]], "is not"),
    ],
)
def test_bad_clicks_are_refused_by_name(clicks, message):
    with pytest.raises(PromptError, match=f"^clicks: .*{message}"):
        boxes_from_clicks(clicks, "clicks")


def test_roi_as_monai_label_sam2_reads_it():
    assert box_from_roi([40, 12, 20, 30, 6, 3]) == [BoxPrompt(4, (12.0, 20.0, 30.0, 40.0))]  # corners sorted per axis
    assert box_from_roi([20, 12, 40, 30], frame=9) == [BoxPrompt(9, (12.0, 20.0, 30.0, 40.0))]
    assert box_from_roi([20, 12, 40, 30, 6, 8], frame="2") == [BoxPrompt(2, (12.0, 20.0, 30.0, 40.0))]
    for roi, frame, message in [
        ([20, 12, 40, 30], None, "names no frame"),
        ([20, 12, 40], None, "give"),
        ("box", None, "give"),
        ([20, 12, 40, 30], 1.5, "not an integer"),
    ]:
        with pytest.raises(PromptError, match=message):
            box_from_roi(roi, frame)


def test_worst_frame_is_the_lowest_dice_among_frames_not_yet_corrected():
    truth = np.zeros((8, 8, 4), np.uint8)
    truth[2:6, 2:6] = 1
    pred = truth.copy()
    pred[..., 1] = 0  # Dice 0
    pred[2:4, 2:6, 2] = 0  # Dice 2*8/(8+16) = 0.667
    assert worst_frame(pred, truth, []) == 1
    assert worst_frame(pred, truth, [1]) == 2
    assert worst_frame(pred, truth, [1, 2]) is None  # frames 0 and 3 are perfect


def test_interactive_model_keeps_the_embeddings_of_the_cine_between_rounds_and_uses_saved_labels():
    cine, truth = disk_cine()
    model = InteractiveCineModel(recipe=RECIPE, medsam=BrightRegionSAM())
    first = model.segment(cine, foreground=[[30, 12, 3], [18, 24, 3], [42, 24, 3], [30, 36, 3]], source="c")
    assert first.method == "track+adapt" and first.status[3] == "labelled"
    assert score_frames(first.labels, truth, [t for t in range(T) if t != 3])["dice"] > 0.85
    embeddings = model.embeddings(cine)
    assert model.embeddings(cine.clone()) is embeddings  # same pixels: kept
    saved = np.full_like(truth, UNLABELLED)
    saved[..., 7] = truth[..., 7]
    second = model.segment(cine, boxes=[[3, 10, 18, 34, 42]], label=saved, source="c")
    assert 7 in second.trained_frames and second.status[7] == "labelled"
    other, _ = disk_cine(radius=9)
    assert model.embeddings(other) is not embeddings
    with pytest.raises(PromptError, match="c foreground: one click on frame 2"):
        model.segment(cine, foreground=[[30, 12, 2]], source="c")


def test_train_task_writes_weights_atomically_and_the_next_inference_starts_from_them(tmp_path, monkeypatch):
    cine, truth = disk_cine()
    labels = []
    for frames in ([1, 6], [3]):
        label = np.full_like(truth, UNLABELLED)
        label[..., frames] = truth[..., frames]
        labels.append(label)
    checkpoint = tmp_path / "model" / "interactive.pt"
    recipe = replace(TINY, steps=20)
    summary = train_on_labelled_cines(
        [(cine, labels[0], "a.nii.gz"), (cine, labels[1], "b.nii.gz")], checkpoint, recipe=asdict(recipe)
    )
    assert summary["cines"] == 2 and summary["frames"] == 3 and checkpoint.is_file()
    model = InteractiveCineModel(checkpoint=checkpoint, recipe=RECIPE, medsam=BrightRegionSAM())
    assert model.start_weights() == str(checkpoint)
    result = model.segment(cine, boxes=[[5, 20, 18, 44, 42]])
    assert result.start == str(checkpoint)

    before = checkpoint.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("training stopped")

    monkeypatch.setattr("vivim_monai.fewshot.adapt.FewShotAdapter._step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_on_labelled_cines([(cine, labels[0], "a.nii.gz")], checkpoint, recipe=asdict(recipe))
    assert checkpoint.read_bytes() == before and sorted(p.name for p in checkpoint.parent.iterdir()) == [
        "interactive.pt"
    ]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda label: np.full_like(label, UNLABELLED), "no labelled frame"),
        (lambda label: label[..., :5], "5 label frames for a cine of 10 frames"),
        (lambda label: label[:, :40], r"frames of \(H, W\) \(64, 40\) differ"),
        (lambda label: np.where(label == 1, 3, label).astype(np.uint8), "class index 3 for 2 classes"),
    ],
)
def test_train_task_refuses_a_bad_label_by_name_and_writes_nothing(tmp_path, make, message):
    cine, truth = disk_cine()
    label = np.full_like(truth, UNLABELLED)
    label[..., 2] = truth[..., 2]
    with pytest.raises(PromptError, match=f"^bad.nii.gz: {message}"):
        train_on_labelled_cines([(cine, make(label), "bad.nii.gz")], tmp_path / "out.pt", recipe=RECIPE)
    with pytest.raises(PromptError, match="no labelled cine"):
        train_on_labelled_cines([], tmp_path / "out.pt", recipe=RECIPE)
    assert not any(tmp_path.iterdir())

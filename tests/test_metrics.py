"""Metrics: hand-computed per-frame scores, NaN handling, confusion matrices, HD95, temporal consistency, handlers."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from conftest import counted_overlap
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.handlers import from_engine
from monai.metrics import compute_hausdorff_distance, get_confusion_matrix

from vivim_monai.handlers import ClipMeanDice
from vivim_monai.metrics import (
    ClipFrameMetric,
    DeviceTimer,
    TemporalReference,
    class_areas,
    confusion_matrix,
    consecutive_iou,
    foreground_mean,
    normalise_confusion,
    per_frame_metrics,
    summarise,
    tc_residual,
    temporal_consistency,
    temporal_reference,
    time_calls,
)


def one_hot(labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, 1, H, W, T) indices -> (B, K, H, W, T) one-hot, like AsDiscreted(to_onehot=K)."""
    return torch.nn.functional.one_hot(labels[:, 0], k).permute(0, 4, 1, 2, 3).float()


def disc_video(radii, size: int = 48, shift: int = 0) -> np.ndarray:
    """(H, W, T) class-1 discs of the given radii (one per frame), centred (plus a column shift)."""
    rows, cols = np.mgrid[:size, :size]
    c = size // 2
    return np.stack([((rows - c) ** 2 + (cols - c - shift) ** 2 <= r * r) for r in radii], axis=-1).astype(np.int64)


def test_hand_computed_binary_frame():
    label = np.zeros((4, 4, 1), dtype=np.int64)
    label[:2, :2] = 1  # 4 GT pixels
    pred = np.zeros_like(label)
    pred[:2, 1:4] = 1  # 6 predicted pixels, 2 of them in the GT: tp 2, fp 4, fn 2, tn 8
    m = per_frame_metrics(pred, label, num_classes=2, include_hd95=False)
    tp, fp, fn, tn = 2, 4, 2, 8
    assert m["dice"][0, 1] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 1/3
    assert m["jaccard"][0, 1] == pytest.approx(tp / (tp + fp + fn))  # 1/4
    assert m["precision"][0, 1] == pytest.approx(tp / (tp + fp))  # 1/3
    assert m["recall"][0, 1] == pytest.approx(tp / (tp + fn))  # 1/2
    assert m["specificity"][0, 1] == pytest.approx(tn / (tn + fp))  # 2/3
    # background is the mirror image: its tp is the class's tn, its fp the class's fn
    assert m["dice"][0, 0] == pytest.approx(2 * tn / (2 * tn + fn + fp))
    assert m["recall"][0, 0] == pytest.approx(m["specificity"][0, 1])


def test_multiclass_frames_match_numpy_and_monai():
    gen = torch.Generator().manual_seed(0)
    k = 3
    pred = torch.randint(0, k, (1, 1, 12, 10, 5), generator=gen)
    label = torch.randint(0, k, (1, 1, 12, 10, 5), generator=gen)
    m = per_frame_metrics(one_hot(pred, k)[0], label[0], include_hd95=False)  # one-hot pred, index label
    p, y = pred[0, 0].numpy(), label[0, 0].numpy()
    for t in range(5):
        for c in range(k):
            tp = np.sum((p[..., t] == c) & (y[..., t] == c))
            fp = np.sum((p[..., t] == c) & (y[..., t] != c))
            fn = np.sum((p[..., t] != c) & (y[..., t] == c))
            assert m["dice"][t, c] == pytest.approx(2 * tp / (2 * tp + fp + fn))
            assert m["jaccard"][t, c] == pytest.approx(tp / (tp + fp + fn))
    # the same counts as MONAI's one-hot confusion matrix with frames as the batch
    as_frames = (one_hot(x, k)[0].permute(3, 0, 1, 2) for x in (pred, label))  # (T, K, H, W)
    cm = get_confusion_matrix(*as_frames, include_background=True).numpy()  # (T, K, [tp fp tn fn])
    np.testing.assert_allclose(m["recall"], cm[..., 0] / (cm[..., 0] + cm[..., 3]))
    np.testing.assert_allclose(m["specificity"], cm[..., 2] / (cm[..., 2] + cm[..., 1]))


def test_empty_in_both_is_nan_and_left_out_of_means():
    k = 3
    label = np.zeros((6, 6, 3), dtype=np.int64)
    label[:3, :3] = 1  # class 1 in every frame
    label[4:, 4:, 2] = 2  # class 2 only in the GT of frame 2
    pred = label.copy()
    pred[4:, 4:, 0] = 2  # frame 0: class 2 predicted but absent from GT -> 0, not NaN
    pred[4:, 4:, 2] = 0  # frame 2: class 2 missed -> 0
    m = per_frame_metrics(pred, label, num_classes=k)
    dice = m["dice"]
    assert math.isnan(dice[1, 2]), "absent from prediction and GT: undefined, not 0 (Vivim) and not 1"
    assert dice[0, 2] == 0 and dice[2, 2] == 0
    np.testing.assert_allclose(dice[:, 1], 1.0)
    assert math.isnan(m["hd95"][1, 2]) and np.isnan(m["hd95"][:, 0]).all()
    s = summarise([m])["dice"]
    assert s["valid_frames"][2] == 2
    assert s["by_frame"][2] == 0.0  # mean of the two defined frames, not of three
    assert s["by_frame_foreground"] == pytest.approx(0.5)
    assert foreground_mean(dice)[1] == 1.0  # frame 1: class 1 only, the NaN class is skipped


@pytest.mark.parametrize("k", [2, 16, 17, 256, 257])
def test_per_frame_counts_match_numpy_whatever_the_index_type(k):
    """Index maps are narrowed to one byte up to 256 classes and pair codes up to 16 classes; both sides of each
    boundary count the same as numpy, per frame (confusion) and per video (areas)."""
    from vivim_monai.metrics import frame_confusion, frame_labels

    gen = np.random.default_rng(k)
    label = gen.integers(0, k, (5, 4, 3))
    label[0, 0, 0] = k - 1  # the largest class is present
    pred = gen.integers(0, k, (5, 4, 3))
    for t in range(3):
        expected = np.bincount((label[..., t] * k + pred[..., t]).ravel(), minlength=k * k).reshape(k, k)
        got = frame_confusion(frame_labels(pred, k), frame_labels(label.astype(np.float32), k), k)[t]
        np.testing.assert_array_equal(got.numpy(), expected)
    np.testing.assert_array_equal(
        class_areas(label, k), [np.bincount(label[..., t].ravel(), minlength=k) for t in range(3)]
    )
    np.testing.assert_array_equal(
        confusion_matrix(pred, label, k), np.bincount((label * k + pred).ravel(), minlength=k * k).reshape(k, k)
    )


def test_confusion_matrix_and_normalisations():
    gen = np.random.default_rng(1)
    k = 4
    label = gen.integers(0, k - 1, (9, 7, 3))  # class 3 never in the GT
    pred = gen.integers(0, k, (9, 7, 3))
    cm = confusion_matrix(pred, label, num_classes=k)
    expected = np.bincount((label * k + pred).ravel(), minlength=k * k).reshape(k, k)
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64 and cm[3].sum() == 0
    by_true, by_pred = normalise_confusion(cm, "true"), normalise_confusion(cm, "pred")
    np.testing.assert_allclose(by_true[:3].sum(axis=1), 1.0)
    assert np.isnan(by_true[3]).all(), "a class with no GT pixels has an undefined (NaN) row"
    np.testing.assert_allclose(by_pred.sum(axis=0), 1.0)
    np.testing.assert_allclose(np.diag(by_true)[:3], [np.mean(pred[label == c] == c) for c in range(3)])
    with pytest.raises(ValueError, match="by must be"):
        normalise_confusion(cm, "rows")


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")
def test_hd95_follows_monai_and_scales_with_spacing():
    label = np.zeros((20, 20, 4), dtype=np.int64)
    label[5:12, 5:12] = 1
    pred = np.zeros_like(label)
    pred[8:15, 5:12, :2] = 1  # frames 0-1: the square moved 3 rows down; frame 2: missed; frame 3: both empty
    label[..., 3] = 0
    px = per_frame_metrics(pred, label, num_classes=2)["hd95"][:, 1]
    direct = compute_hausdorff_distance(
        torch.nn.functional.one_hot(torch.as_tensor(pred[..., 0]), 2).permute(2, 0, 1)[None],
        torch.nn.functional.one_hot(torch.as_tensor(label[..., 0]), 2).permute(2, 0, 1)[None],
        percentile=95,
    )
    assert px[0] == pytest.approx(float(direct[0, 0])) and px[0] == pytest.approx(3.0)
    assert px[2] == pytest.approx(math.hypot(20, 20)), "one side empty: the frame diagonal, not NaN"
    assert math.isnan(px[3])
    iso = per_frame_metrics(pred, label, num_classes=2, spacing=0.5)["hd95"][:, 1]
    np.testing.assert_allclose(iso[:3], px[:3] * 0.5, rtol=1e-6)
    rows_mm = per_frame_metrics(pred, label, num_classes=2, spacing=(2.0, 1.0))["hd95"][:, 1]
    assert rows_mm[0] == pytest.approx(6.0), "a row shift scales with the row spacing"
    assert rows_mm[2] == pytest.approx(math.hypot(40, 20))
    long = per_frame_metrics(np.tile(pred, 5), np.tile(label, 5), num_classes=2)["hd95"][:, 1]  # 20 frames
    np.testing.assert_array_equal(long, np.tile(px, 5))


def test_tc_residual_by_hand():
    areas = np.array([[0.0], [0.0], [10.0], [0.0], [0.0]])
    np.testing.assert_allclose(tc_residual(areas, np.array([[0.0, 10.0]]))[:, 0], [0, -0.5, 1, -0.5, 0])
    linear = np.arange(6, dtype=np.float64)[:, None] * 3
    np.testing.assert_allclose(tc_residual(linear, np.array([[0.0, 15.0]])), 0.0, atol=1e-12)


def test_tc_threshold_and_reference_by_hand():
    blink = np.zeros((5, 5, 5), dtype=np.int64)
    blink[:2, :5, 2] = 1  # class 1: areas 0, 0, 10, 0, 0 -> residual 0, -0.5, 1, -0.5, 0 with bounds (0, 10)
    bounds = np.array([[15.0, 25.0], [0.0, 10.0]])
    loose = temporal_consistency(blink, np.zeros_like(blink), 2, TemporalReference(bounds, np.array([0.4, 0.4])))
    strict = temporal_consistency(blink, np.zeros_like(blink), 2, TemporalReference(bounds, np.array([0.6, 0.6])))
    np.testing.assert_array_equal(loose["pred_inconsistent"][:, 1], [0, 1, 1, 1, 0])
    np.testing.assert_array_equal(strict["pred_inconsistent"][:, 1], [0, 0, 1, 0, 0])
    assert loose["pred_inconsistent_fraction"][1] == pytest.approx(3 / 5)
    assert loose["pred_mean_abs_residual"][1] == pytest.approx(2 / 5)
    assert loose["gt_inconsistent_fraction"][1] == 0 and loose["gt_mean_abs_residual"][1] == 0
    curves = [np.array([[2.0], [6.0], [6.0], [10.0]]), np.array([[4.0], [5.0], [7.0]])]
    ref = temporal_reference(curves)
    np.testing.assert_allclose(ref.bounds, [[2.0, 10.0]])
    np.testing.assert_allclose(ref.thresholds, [0.25])  # the largest GT |m|: |6 - (6 + 10) / 2| / 8


def test_temporal_consistency_smooth_versus_flicker():
    t = np.arange(24)
    radii = 8 + 4 * np.sin(2 * np.pi * t / 24)
    label = disc_video(radii)
    smooth = disc_video(radii + 1, shift=2)  # a different, but smooth, prediction
    reference = temporal_reference([class_areas(label, 2), class_areas(disc_video(radii + 2), 2)])
    tc = temporal_consistency(smooth, label, num_classes=2, reference=TemporalReference(reference.bounds, 0.05))
    assert tc["pred_inconsistent"].sum() == 0 and tc["gt_inconsistent"].sum() == 0
    flicker = smooth.copy()
    flicker[..., 10] = 0  # the structure vanishes in one frame
    tc = temporal_consistency(flicker, label, num_classes=2)  # reference fitted on this video's GT
    assert tc["pred_inconsistent"][10, 1] and tc["pred_inconsistent"][10, 0]
    assert 0 < tc["pred_inconsistent_fraction"][1] <= 3 / 24  # frame 10 and at most its two neighbours
    assert tc["gt_inconsistent_fraction"][1] == 0, "the reference GT is consistent by construction"
    assert tc["pred_mean_abs_residual"][1] > tc["gt_mean_abs_residual"][1]
    assert tc["stability_gap"][1] < 0, "the flickering prediction is less stable than the GT"


def test_mask_stability_static_and_empty():
    label = np.zeros((10, 10, 5), dtype=np.int64)
    label[2:6, 2:6] = 1
    iou = consecutive_iou(label, num_classes=3)
    assert iou.shape == (4, 3)
    np.testing.assert_allclose(iou[:, :2], 1.0)
    assert np.isnan(iou[:, 2]).all(), "class 2 is absent from both frames: undefined"
    tc = temporal_consistency(label, label, num_classes=3)
    np.testing.assert_allclose(tc["pred_stability"][:2], 1.0)
    np.testing.assert_allclose(tc["stability_gap"][:2], 0.0)


def _batches(k: int = 3, n: int = 3, b: int = 2):
    gen = torch.Generator().manual_seed(3)
    out = []
    for _ in range(n):
        label = torch.randint(0, k, (b, 1, 8, 8, 4), generator=gen)
        pred = torch.where(torch.rand(label.shape, generator=gen) < 0.7, label, torch.zeros_like(label))
        pred[0, 0, ..., 1] = torch.where(pred[0, 0, ..., 1] == 2, 1, pred[0, 0, ..., 1])  # make empty-empty likely
        label[0, 0, ..., 1] = torch.where(label[0, 0, ..., 1] == 2, 1, label[0, 0, ..., 1])
        out.append({"pred": one_hot(pred, k), "label": one_hot(label, k), "pred_idx": pred, "label_idx": label})
    return out


def _direct_foreground_dice(batches) -> float:
    dice = np.concatenate(
        [counted_overlap(b["pred_idx"][i], b["label_idx"][i], 3)["dice"] for b in batches for i in range(2)]
    )
    assert np.isnan(dice[:, 2]).any(), "the fixture must contain an empty-empty frame"
    with np.errstate(all="ignore"):
        per_class = np.nanmean(dice, axis=0)
    return float(np.mean(per_class[1:]))


def test_ignite_handler_equals_direct_computation():
    batches = _batches()
    engine = Engine(lambda engine, batch: batch)
    ClipMeanDice(num_classes=3, output_transform=from_engine(["pred", "label"])).attach(engine, "val_mean_dice")
    ClipMeanDice(num_classes=3, output_transform=from_engine(["pred_idx", "label_idx"])).attach(engine, "idx_dice")
    engine.run(batches, max_epochs=1)
    expected = _direct_foreground_dice(batches)
    assert engine.state.metrics["val_mean_dice"] == pytest.approx(expected)
    assert engine.state.metrics["idx_dice"] == pytest.approx(expected), "index maps score like one-hot"
    assert engine.state.metric_details["val_mean_dice"].shape == (3 * 2 * 4, 3)


def test_clip_metric_on_decollated_lists_and_bundle_config():
    batches = _batches()
    metric = ClipFrameMetric(num_classes=3)
    for b in batches:
        metric(list(b["pred"]), list(b["label"]))  # channel-first items, as after decollate_batch
    assert float(metric.aggregate()) == pytest.approx(_direct_foreground_dice(batches))
    assert metric.aggregate("mean_batch").shape == (2,) and metric.aggregate("none").shape == (24, 3)
    parser = ConfigParser(
        {
            "m": {
                "_target_": "vivim_monai.handlers.ClipMeanDice",
                "num_classes": 3,
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            }
        }
    )
    assert isinstance(parser.get_parsed_content("m"), ClipMeanDice)


def test_input_layouts_and_errors():
    label = np.zeros((8, 8, 3), dtype=np.int64)
    label[2:5, 2:5] = 1
    meta = MetaTensor(torch.as_tensor(label)[None].float())  # (1, H, W, T) float indices, as after loading
    batch = one_hot(torch.as_tensor(label)[None, None], 2)  # (1, K, H, W, T)
    np.testing.assert_array_equal(class_areas(meta, 2), class_areas(batch))
    with pytest.raises(ValueError, match="num_classes is required"):
        per_frame_metrics(label, label)
    with pytest.raises(ValueError, match="class indices must lie"):
        per_frame_metrics(label + 2, label, num_classes=2)
    with pytest.raises(ValueError, match="frames differ"):
        per_frame_metrics(label[..., :2], label, num_classes=2)
    with pytest.raises(ValueError, match="one video"):
        per_frame_metrics(batch.repeat(2, 1, 1, 1, 1), batch.repeat(2, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="channels"):
        per_frame_metrics(torch.zeros(3, 8, 8, 3), label, num_classes=2)


def test_timer_reads_the_clock_only_between_synchronisations(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    clock = iter([10.0, 10.5, 20.0, 20.25, 30.0, 31.0])

    def fake_clock():
        events.append("clock")
        return next(clock)

    monkeypatch.setattr(time, "perf_counter", fake_clock)
    seconds = time_calls(lambda: events.append("call"), repeats=2, device="cuda", warmup=1)
    assert seconds == [0.5, 0.25]
    assert events == ["call"] + ["sync", "clock", "call", "sync", "clock"] * 2, "warm-up untimed, then sync-clock"
    with pytest.raises(RuntimeError, match="without start"):
        DeviceTimer().stop()
    with DeviceTimer("cpu") as timer:  # CPU: no synchronisation at all
        pass
    assert timer.seconds == 1.0 and events.count("sync") == 4

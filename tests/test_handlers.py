"""Workflow handlers: the evaluation report (files equal the metrics functions, temporal "n/a" for unordered frames,
DDP gathering), per-case outputs from the original cine, per-epoch clip redraw and the inference timer."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import counted_overlap, file_digest
from ignite.engine import Engine
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from PIL import Image

import vivim_monai.handlers.report as report_module
from vivim_monai.data import ClipDataset, ClipSampler, load_cine, write_phantom_case
from vivim_monai.engines import case_fields, engine_cases
from vivim_monai.handlers import (
    TEMPORAL_KEYS,
    CaseOutputHandler,
    ClipEpochResampler,
    EvaluationReport,
    InferenceTimer,
    count_frames,
)
from vivim_monai.io import read_dicom_seg_labels
from vivim_monai.metrics import confusion_matrix, per_frame_metrics, summarise, temporal_consistency

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")

H, W, T, K = 32, 40, 6, 3
NAMES = ("background", "solid", "non-solid")
REPORT_FILES = [
    "metrics_per_frame.csv",
    "metrics_per_video.csv",
    "metrics_summary.json",
    *[f"confusion_matrix{s}.{e}" for s in ("", "_recall", "_precision") for e in ("csv", "png")],
]


def make_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred, label) ``(H, W, T)``: a shifted box (class 1) and bar (class 2); class 2 is absent from both in frame 2
    (NaN scores), the prediction misses class 1 in frame 4 (Dice 0), plus a little label noise."""
    rng = np.random.default_rng(seed)
    label, pred = np.zeros((H, W, T), np.uint8), np.zeros((H, W, T), np.uint8)
    for t in range(T):
        label[4 + t : 14 + t, 5 + seed : 15 + seed, t] = 1
        if t != 4:
            pred[5 + t : 15 + t, 6 + seed : 15 + seed, t] = 1
        if t != 2:
            label[20:28, 20 + t : 30 + t, t] = 2
            pred[20:27, 20 + t : 31 + t, t] = 2
    noise = rng.random((H, W, T)) < 0.02
    pred[noise] = rng.integers(0, K, int(noise.sum()))
    pred[..., 2][pred[..., 2] == 2] = 0
    pred[..., 4][pred[..., 4] == 1] = 0
    return pred, label


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def evaluator_for(cases: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict[str, dict], orders: dict[str, str]):
    """A MONAI SupervisedEvaluator (identity network): each image holds its prediction, so pred == image."""
    items = [
        {
            "image": MetaTensor(torch.from_numpy(pred).float()[None], meta=dict(meta[case_id])),
            "label": MetaTensor(torch.from_numpy(label)[None]),
            "case_id": case_id,
            "frame_order": orders[case_id],
        }
        for case_id, (pred, label) in cases.items()
    ]
    return SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=DataLoader(items, batch_size=1), network=torch.nn.Identity()
    )


def test_evaluation_report_files_equal_the_metrics(tmp_path, caplog):
    cases = {"case0": make_case(0), "case1": make_case(1)}
    spacing = {"case0": (0.5, 0.25), "case1": (0.3, 0.3)}
    meta = {c: {"filename_or_obj": f"/data/{c}.dcm", "pixel_spacing_mm": spacing[c]} for c in cases}
    evaluator = evaluator_for(cases, meta, {"case0": "temporal", "case1": "unknown"})
    report = EvaluationReport(tmp_path / "report", NAMES)
    report.attach(evaluator)
    timer = InferenceTimer(warmup=0)
    timer.attach(evaluator)
    with caplog.at_level(logging.INFO, logger="vivim_monai.evaluate"):
        evaluator.run()
        evaluator.run()  # a second run starts afresh (validation every epoch)
    out = tmp_path / "report"
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES), "all files, no temporaries"
    assert "Dice per class" in caplog.text

    expected = {c: per_frame_metrics(p, y, K, spacing=spacing[c]) for c, (p, y) in cases.items()}
    rows = read_csv(out / "metrics_per_frame.csv")
    assert [(r["case_id"], int(r["frame"])) for r in rows] == [(c, t) for c in cases for t in range(T)]
    for case_id, metrics in expected.items():
        case_rows = [r for r in rows if r["case_id"] == case_id]
        for metric, values in metrics.items():
            table = np.array([[float(r[f"{metric}_{n}"]) for n in NAMES] for r in case_rows])
            np.testing.assert_allclose(table, values, rtol=1e-12, equal_nan=True, err_msg=f"{case_id} {metric}")
    for case_id, (p, y) in cases.items():  # and Dice / Jaccard by counting pixels, independently of the package
        case_rows = [r for r in rows if r["case_id"] == case_id]
        for metric, values in counted_overlap(p, y, K).items():
            table = np.array([[float(r[f"{metric}_{n}"]) for n in NAMES] for r in case_rows])
            np.testing.assert_allclose(table, values, rtol=1e-12, equal_nan=True, err_msg=f"{case_id} {metric}")
    assert math.isnan(float(rows[2]["dice_non-solid"])), "absent from both: undefined, not 0 or 1"
    assert float(rows[4]["dice_solid"]) == 0.0 and float(rows[4]["hd95_solid"]) == pytest.approx(math.hypot(16, 10))

    videos = read_csv(out / "metrics_per_video.csv")
    stats = summarise(list(expected.values()))
    for i, row in enumerate(videos):
        assert int(row["n_frames"]) == T
        np.testing.assert_allclose([float(row[f"dice_{n}"]) for n in NAMES], stats["dice"]["per_video"][i])
        assert float(row["dice_fg_mean"]) == pytest.approx(stats["dice"]["per_video_foreground"][i])
    tc = temporal_consistency(*cases["case0"], K)
    for key in TEMPORAL_KEYS:
        np.testing.assert_allclose([float(videos[0][f"{key}_{n}"]) for n in NAMES], tc[key], equal_nan=True)
        assert all(videos[1][f"{key}_{n}"] == "n/a" for n in NAMES), "frame order unknown: no temporal metrics"

    counts = sum(confusion_matrix(p, y, K) for p, y in cases.values())
    table = read_csv(out / "confusion_matrix.csv")
    assert [r["true\\pred"] for r in table] == list(NAMES)
    np.testing.assert_array_equal([[int(r[n]) for n in NAMES] for r in table], counts)
    recall = np.array([[float(r[n]) for n in NAMES] for r in read_csv(out / "confusion_matrix_recall.csv")])
    precision = np.array([[float(r[n]) for n in NAMES] for r in read_csv(out / "confusion_matrix_precision.csv")])
    np.testing.assert_allclose(recall.sum(axis=1), 1.0)
    np.testing.assert_allclose(precision.sum(axis=0), 1.0)
    np.testing.assert_allclose(np.diag(recall), np.diag(counts) / counts.sum(axis=1))
    for name in ("confusion_matrix", "confusion_matrix_recall", "confusion_matrix_precision"):
        with Image.open(out / f"{name}.png") as image:
            assert image.format == "PNG" and image.width > 200 and len(image.getcolors(1 << 16) or []) > 3

    summary = json.loads((out / "metrics_summary.json").read_text())
    assert summary["num_cases"] == 2 and summary["num_frames"] == 2 * T and summary["class_names"] == list(NAMES)
    assert summary["by_frame"]["dice"]["foreground_mean"] == pytest.approx(stats["dice"]["by_frame_foreground"])
    assert summary["valid_frames"]["dice"] == {"background": 12, "solid": 12, "non-solid": 10}
    assert summary["temporal"]["num_cases"] == 1 and summary["temporal"]["skipped"] == {"case1": "frame order unknown"}
    assert summary["hd95_unit"] == "mm" and "absent" in summary["absent_in_both"]
    assert summary["inference_timing"]["frames"] == 2 * T and "FORWARD_COMPLETED" in timer.span

    metrics = evaluator.state.metrics
    assert metrics["mean_dice_fg"] == pytest.approx(stats["dice"]["by_frame_foreground"])
    assert metrics["mean_dice_fg_by_video"] == pytest.approx(stats["dice"]["by_video_foreground"])
    assert metrics["dice_solid"] == pytest.approx(stats["dice"]["by_frame"][1])
    timing = summary["inference_timing"]
    assert metrics["fps"] == pytest.approx(timing["frames"] / timing["seconds"]) and math.isfinite(
        metrics["mean_hd95_fg"]
    )


def plain_engine(outputs: list[list[dict]], batches: list[list[dict]] | None = None) -> Engine:
    """An ignite engine whose iterations yield the given decollated outputs (and batches)."""

    def step(engine, index):
        engine.state.batch = batches[index] if batches else index
        return outputs[index]

    return Engine(step)


def test_report_gathers_ranks_and_only_rank_zero_writes(tmp_path, monkeypatch):
    (p0, y0), (p1, y1), (p2, y2) = make_case(0), make_case(1), make_case(2)
    local = [
        {"pred": torch.from_numpy(p0)[None], "label": torch.from_numpy(y0)[None], "case_id": "a"},
        {"pred": torch.from_numpy(p1)[None], "label": torch.from_numpy(y1)[None], "case_id": "b"},
    ]
    other = EvaluationReport(tmp_path / "unused", NAMES, include_hd95=False)
    remote = [other.evaluate_case(case_fields({"pred": p2[None], "label": y2[None], "case_id": "c"}))]
    dist = report_module.dist
    monkeypatch.setattr(dist, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)

    def all_gather_object(parts, obj):
        parts[0], parts[1] = obj, remote + obj[:1]  # rank 1 also got case "a" (sampler padding)

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    expected = summarise([per_frame_metrics(p, y, K, include_hd95=False) for p, y in ((p0, y0), (p1, y1), (p2, y2))])
    for rank in (1, 0):
        monkeypatch.setattr(dist, "get_rank", lambda: rank)
        engine = plain_engine([local])  # one iteration with a batch of two cases
        report = EvaluationReport(tmp_path / f"rank{rank}", NAMES, include_hd95=False, plot=False, prefix="test_")
        report.attach(engine)
        engine.run(range(1))
        assert engine.state.metrics["test_mean_dice_fg"] == pytest.approx(expected["dice"]["by_frame_foreground"])
        assert report.summary["num_cases"] == 3
    assert not (tmp_path / "rank1").exists(), "only rank 0 writes"
    rows = read_csv(tmp_path / "rank0" / "test_metrics_per_video.csv")
    assert [r["case_id"] for r in rows] == ["a", "b", "c"] and "hd95_solid" not in rows[0]


def test_case_fields_from_collated_and_decollated_data():
    pred = torch.zeros(2, K, 8, 8, 4)
    pred[:, 1] = 1.0  # one-hot of class 1
    image = MetaTensor(
        torch.zeros(2, 1, 8, 8, 4),
        meta={
            "filename_or_obj": ["/in/x1.dcm", "/in/x2.dcm"],
            "pixel_spacing_mm": [torch.tensor([0.5, 0.5]), torch.tensor([0.7, 0.7])],  # as collated
            "frame_time_ms": torch.tensor([40.0, 25.0]),
            "frame_time_source": ["default", "FrameTime"],
        },
    )
    image.is_batch = True
    batch = {"image": image, "image_source": ["/a/1.png", "/b.dcm"]}
    engine = SimpleNamespace(state=SimpleNamespace(output={"pred": pred, "image": image}, batch=batch, iteration=1))
    first, second = engine_cases(engine)  # decollate=False: the collated dicts are split here
    assert (first.case_id, second.case_id) == ("x1", "x2"), "file stems when the datalist has no case_id"
    assert first.pred.shape == (1, 8, 8, 4) and int(first.pred.max()) == 1 and first.label is None
    assert (
        first.spacing_mm == pytest.approx((0.5, 0.7)) and first.frame_time_ms is None and second.frame_time_ms == 25.0
    )
    assert (first.source, second.source) == ("/a/1.png", "/b.dcm"), "image_source wins over filename_or_obj"
    assert count_frames(engine.state.output) == 8
    fields = case_fields(
        {"pred": torch.zeros(1, 8, 8, 4), "image_source": [["/f/1.png"], ["/f/2.png"]]}, {"case_id": ["v1"]}
    )
    assert fields.source == ["/f/1.png", "/f/2.png"] and fields.case_id == "v1" and fields.spacing_mm is None
    with pytest.raises(ValueError, match="no label"):
        EvaluationReport("unused", NAMES).evaluate_case(fields)
    with pytest.raises(ValueError, match="unique class names"):
        EvaluationReport("unused", NAMES, num_classes=4)


def test_case_outputs_from_the_original_cine(tmp_path, caplog):
    inputs = tmp_path / "inputs"
    entry = write_phantom_case(inputs, "case0", seed=0, num_frames=6, height=64, width=64)
    frames_dir = inputs / "frames1"
    frames_dir.mkdir()
    rng = np.random.default_rng(0)
    frame_paths = []
    for t in range(4):
        frame_paths.append(str(frames_dir / f"f{t}.png"))
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(frame_paths[-1])
    before = {p: file_digest(p) for p in inputs.rglob("*") if p.is_file()}

    cine = load_cine(entry["image"])
    label = load_cine(entry["label"])[0]
    preprocessed = MetaTensor(torch.zeros(3, 32, 32, 6), meta=dict(cine.meta))  # cropped/resized: not re-used
    frames_pred = torch.zeros(1, 40, 48, 4)
    frames_pred[0, 10:20, 10:30] = 2
    outputs = [
        {"pred": label[None].float(), "image": preprocessed, "case_id": "case0"},
        {
            "pred": frames_pred,
            "image": MetaTensor(torch.zeros(3, 32, 32, 4), meta={"filename_or_obj": "/nowhere/else.dcm"}),
            "image_source": frame_paths,
            "case_id": "frames1",
        },
    ]
    handler = CaseOutputHandler(tmp_path / "out", NAMES, overlay_max_size=48)
    engine = plain_engine([outputs])
    handler.attach(engine)
    with caplog.at_level(logging.INFO, logger="vivim_monai.inference"):
        engine.run(range(1))

    folder = tmp_path / "out" / "case0"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"case0{e}" for e in ("_seg.nii.gz", "_seg.dcm", "_overlay.gif", "_areas.csv", "_areas.png")
    )
    np.testing.assert_array_equal(load_cine(folder / "case0_seg.nii.gz")[0].numpy(), label.numpy())
    np.testing.assert_array_equal(read_dicom_seg_labels(folder / "case0_seg.dcm"), label.numpy())
    with Image.open(folder / "case0_overlay.gif") as gif:
        assert gif.n_frames >= 2 and max(gif.size) == 48
    areas = read_csv(folder / "case0_areas.csv")
    assert len(areas) == 6 and areas[0]["time_ms"] == "0.0000" and areas[1]["time_ms"] == "40.0000"
    assert areas[0]["solid_area_mm2"] != "", "spacing from the metadata"
    second = handler.written[1]
    assert set(second.files) == {"nifti", "overlay", "csv", "area_plot", "dicom_seg", "dicom_source"}, "SC + SEG"
    assert not second.skipped and second.files["dicom_source"].name == "frames1_cine.dcm"
    assert load_cine(second.files["nifti"]).shape == (
        1,
        40,
        48,
        4,
    ), "re-read from image_source (filename_or_obj is gone)"
    assert str(folder) in caplog.text and "dicom_source" in caplog.text
    assert {p: file_digest(p) for p in inputs.rglob("*") if p.is_file()} == before, "inputs untouched, nothing added"


def test_clip_epoch_resampler_redraws_random_clips_each_epoch():
    length = 40
    case = {"case_id": "c0", "image": MetaTensor(torch.zeros(1, 4, 4, length)), "label": torch.zeros(1, 4, 4, length)}
    sampler = ClipSampler(clip_length=2, stride=1, max_numerosity=3, mode="random", seed=5)
    dataset = ClipDataset([case], sampler)
    served: dict[int, list[int]] = {}

    def step(engine, clip):
        served.setdefault(engine.state.epoch, []).append(int(clip["clip_start"]))

    engine = Engine(step)
    ClipEpochResampler(dataset).attach(engine)
    engine.run(torch.utils.data.DataLoader(dataset, batch_size=None), max_epochs=2)
    assert served[1] == sampler.train_starts(length, epoch=0) and served[2] == sampler.train_starts(length, epoch=1)
    assert served[1] != served[2], "new clips in epoch 2"
    with pytest.raises(TypeError, match="set_epoch"):
        ClipEpochResampler([case])

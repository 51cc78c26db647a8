"""The comparison report of cross-validated models (vivim_monai.experiments) on a fake two-model, two-fold output."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_script
from monai.bundle import ConfigParser
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

import vivim_monai.experiments as experiments
from vivim_monai.data import datalist_folds, load_datalist, make_phantom_data
from vivim_monai.experiments import (
    FoldCurves,
    FoldStat,
    ModelStats,
    archive_results,
    config_record,
    fold_curves,
    joint_fold_results,
    joint_report,
    load_run,
    loss_per_epoch,
    model_parser,
    paired_difference,
    parallel,
    per_dataset_means,
    predict_case,
    winner_sentence,
    write_comparison,
    write_training_curves,
)
from vivim_monai.experiments.cases import jaccard_empty_as_one
from vivim_monai.experiments.parallel import Job, JobResult, run_jobs, threads_per_job
from vivim_monai.io.draw import PALETTE

MODELS = ("vivim_tiny", "per_frame_unet_small")
OVERRIDES = {"spatial_size": [64, 64], "in_channels": 1, "channel_mean": [0.5], "channel_std": [0.25]}  # grey input
# foreground means per fold: dice, jaccard, precision, recall, hd95, inconsistent fraction, stability gap, fps
NUMBERS = {
    "vivim_tiny": [
        (0.80, 0.70, 0.85, 0.78, 3.0, 0.10, 0.01, 10.0),
        (0.90, 0.82, 0.91, 0.88, 5.0, 0.20, 0.03, 20.0),
    ],
    "per_frame_unet_small": [
        (0.75, 0.60, 0.70, 0.80, 4.0, None, None, 40.0),
        (0.80, 0.70, 0.82, 0.79, None, None, None, 50.0),
    ],
}
TRAIN_SECONDS = {"vivim_tiny": (600.0, 900.0), "per_frame_unet_small": (300.0, 420.0)}
VAL_DICE = {0: [0.2, 0.5, 0.7], 1: [0.3, 0.4, 0.8]}  # per epoch
LOSSES = {0: [1.0, 0.8, 0.6, 0.5, 0.4, 0.2], 1: [0.9, 0.9, 0.7, 0.5, 0.3, 0.3]}  # 2 iterations per epoch


def summary(numbers: tuple) -> dict:
    dice, jaccard, precision, recall, hd95, inconsistent, gap, fps = numbers
    by_frame = {
        name: {"background": 0.99, "lumen": value, "foreground_mean": value}
        for name, value in zip(("dice", "jaccard", "precision", "recall", "hd95"), (dice, jaccard, precision, recall))
    }
    by_frame["hd95"] = {"background": None, "lumen": hd95, "foreground_mean": hd95}
    by_frame["specificity"] = {"background": 0.9, "lumen": 0.99, "foreground_mean": 0.99}
    if inconsistent is None:
        temporal = {"num_cases": 1, "skipped": {"case": "frame_order unknown"}, "by_video": {}}
    else:
        temporal = {
            "num_cases": 1,
            "skipped": {},
            "by_video": {
                "pred_inconsistent_fraction": {
                    "background": 0.0,
                    "lumen": inconsistent,
                    "foreground_mean": inconsistent,
                },
                "stability_gap": {"background": 0.0, "lumen": gap, "foreground_mean": gap},
            },
        }
    return {
        "num_cases": 1,
        "class_names": ["background", "lumen"],
        "by_frame": by_frame,
        "by_video": by_frame,
        "hd95_unit": "mm",
        "temporal": temporal,
        "inference_timing": {"fps": fps, "frames": 6, "seconds": 6 / fps},
    }


def write_events(folder: Path, fold: int, shift: float) -> None:
    """Two event files as the bundle writes them: train loss per iteration, validation Dice per epoch after it."""
    with SummaryWriter(str(folder)) as writer:
        for step, value in enumerate(LOSSES[fold], start=1):
            writer.add_scalar("train_loss", value + shift, step, walltime=1000.0 + step)
    with SummaryWriter(str(folder), filename_suffix=".val") as writer:
        for epoch, value in enumerate(VAL_DICE[fold], start=1):
            writer.add_scalar("val_mean_dice", value - shift, epoch, walltime=1000.0 + 2 * epoch + 0.5)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, Path]:
    """A real tiny datalist (2 phantom cines of 6 frames, 2 folds) and a binary lumen dataset overlay."""
    root = tmp_path_factory.mktemp("phantom")
    datalist = make_phantom_data(root, cases=2, frames=6, folds=2)
    overlay = root / "dataset.json"
    dataset = {"class_names": ["background", "lumen"], "label_format": "binary", "use_fan": False, "focal_alpha": None}
    overlay.write_text(json.dumps(dataset))
    return datalist, overlay


def build_output(root: Path, phantom: tuple[Path, Path], checkpoint: bool = True) -> Path:
    """``<root>/out``: datalist_folds.json and two model folders of two evaluated folds each."""
    datalist, overlay = phantom
    output = root / "out"
    document = json.loads(datalist.read_text())
    document["root"] = str(datalist.parent.resolve())
    output.mkdir(parents=True)
    (output / "datalist_folds.json").write_text(json.dumps(document))
    for model in MODELS:
        configs = [str(overlay), str(REPO_ROOT / "configs" / f"{model}.json")]
        seconds = {}
        for fold in (0, 1):
            evaluation = output / model / f"fold_{fold}" / "eval"
            evaluation.mkdir(parents=True)
            (evaluation / "metrics_summary.json").write_text(json.dumps(summary(NUMBERS[model][fold])))
            write_events(evaluation, fold, shift=0.0 if model == "vivim_tiny" else 0.1)
            seconds[f"train_fold_{fold}"] = TRAIN_SECONDS[model][fold]
            seconds[f"evaluate_fold_{fold}"] = 5.0
        timing = {"seconds": seconds, "configs": configs, "overrides": OVERRIDES}
        (output / model / "cv_timing.json").write_text(json.dumps(timing))
    if checkpoint:  # only Vivim has a fold-0 checkpoint: randomly initialised
        torch.manual_seed(0)
        network = model_parser(load_run(output / "vivim_tiny", "vivim_tiny")).get_parsed_content("network_def")
        (output / "vivim_tiny" / "fold_0" / "models").mkdir()
        torch.save({"model": network.state_dict()}, output / "vivim_tiny" / "fold_0" / "models" / "model.pt")
    return output


@pytest.fixture(scope="module")
def report(tmp_path_factory, phantom) -> Path:
    output = build_output(tmp_path_factory.mktemp("compare"), phantom)
    return write_comparison(output, list(MODELS), dataset_config=phantom[1])


def read_rows(report: Path) -> dict[str, dict[str, str]]:
    with open(report.parent / "comparison.csv", newline="") as handle:
        return {row["model"]: row for row in csv.DictReader(handle)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def test_table_numbers_are_fold_means_and_sds(report):
    rows = read_rows(report)
    for model in MODELS:
        for index, metric in enumerate(("dice", "jaccard", "precision", "recall")):
            mean, sd = mean_sd([fold[index] for fold in NUMBERS[model]])
            assert float(rows[model][f"{metric}_mean"]) == pytest.approx(mean, abs=1e-6)
            assert float(rows[model][f"{metric}_sd"]) == pytest.approx(sd, abs=1e-6)
        minutes = mean_sd([s / 60 for s in TRAIN_SECONDS[model]])
        assert float(rows[model]["train_minutes_mean"]) == pytest.approx(minutes[0], abs=1e-6)
        assert float(rows[model]["train_minutes_sd"]) == pytest.approx(minutes[1], abs=1e-6)
        assert float(rows[model]["fps_mean"]) == pytest.approx(np.mean([f[7] for f in NUMBERS[model]]), abs=1e-6)
        assert rows[model]["dice_fold_1"] == f"{NUMBERS[model][1][0]:.6f}"
    # HD95 undefined in one fold of the baseline: the mean of the other, no sd
    assert float(rows["per_frame_unet_small"]["hd95_mean"]) == pytest.approx(4.0)
    assert rows["per_frame_unet_small"]["hd95_n"] == "1" and rows["per_frame_unet_small"]["hd95_sd"] == "nan"
    assert float(rows["vivim_tiny"]["stability_gap_mean"]) == pytest.approx(0.02)
    assert rows["per_frame_unet_small"]["pred_inconsistent_fraction_n"] == "0"
    text = report.read_text()
    assert "| vivim_tiny | " in text and "0.850 ± 0.071" in text and "0.775 ± 0.035" in text
    assert "12.5 ± 3.5" in text and "6.0 ± 1.4" in text, "training minutes per fold"
    assert "4.000 (1/2 folds)" in text and "HD95 (mm)" in text
    unet_row = next(line for line in text.splitlines() if line.startswith("| per_frame_unet_small | "))
    assert unet_row.count("n/a") == 3 and "per_frame_unet_small: frame_order unknown" in text, "temporal skipped"
    assert "| Jaccard, both empty = 1 |" in text and rows["vivim_tiny"]["jaccard_empty_as_one_n"] == "0", "no frames"
    assert "| vivim_tiny | 0.800 / 0.700 | 0.900 / 0.820 |" in text, "per-fold table"


def test_paired_differences_and_winner(report):
    rows = read_rows(report)
    differences = [a[0] - b[0] for a, b in zip(NUMBERS["vivim_tiny"], NUMBERS["per_frame_unet_small"])]
    mean, sd = mean_sd(differences)
    assert float(rows["per_frame_unet_small"]["paired_dice_diff_mean"]) == pytest.approx(mean, abs=1e-6)
    assert float(rows["per_frame_unet_small"]["paired_dice_diff_sd"]) == pytest.approx(sd, abs=1e-6)
    assert rows["vivim_tiny"]["paired_dice_diff_n"] == "0"
    text = report.read_text()
    assert f"| vivim_tiny − per_frame_unet_small | {mean:+.3f} ± {sd:.3f} | +0.110 ± 0.014 | 2/2 |" in text
    assert "**vivim_tiny** beats the runner-up per_frame_unet_small: 0.850 ± 0.071 vs 0.775 ± 0.035" in text
    assert f"difference of means of {0.85 - 0.775:+.3f}" in text


def test_winner_sentence_names_the_best_model():
    def stats(name: str, dice: dict[int, float]) -> ModelStats:
        empty = FoldStat()
        return ModelStats(name, sorted(dice), None, {"dice": FoldStat(dice)}, "mm", "", empty, empty)

    sentence = winner_sentence([stats("vivim", {0: 0.6, 1: 0.7}), stats("unet", {0: 0.8, 1: 0.7})])
    assert sentence.startswith("On foreground Dice") and "**unet** beats the runner-up vivim" in sentence
    assert "+0.100" in sentence and "unet better in 1/2 shared folds" in sentence
    assert paired_difference(FoldStat({0: 0.5, 2: 0.9}), FoldStat({0: 0.2, 1: 0.1})).values == {0: pytest.approx(0.3)}
    assert "No model" in winner_sentence([stats("a", {})])


def test_parameter_counts_equal_the_built_networks(report, phantom):
    rows = read_rows(report)
    counts = {}
    for model in MODELS:
        parser = ConfigParser()
        parser.read_config(
            [
                str(REPO_ROOT / "bundle/configs/train.json"),
                str(phantom[1]),
                str(REPO_ROOT / "configs" / f"{model}.json"),
            ]
        )
        for key, value in OVERRIDES.items():
            parser[key] = value
        counts[model] = sum(p.numel() for p in parser.get_parsed_content("network_def").parameters())
        assert int(rows[model]["parameters"]) == counts[model]
        assert f"| {model} | {counts[model] / 1e6:.3f} |" in report.read_text()
    assert counts["vivim_tiny"] != counts["per_frame_unet_small"]


def test_training_curves_png(report):
    image = Image.open(report.parent / "training_curves.png").convert("RGB")
    assert image.width >= 800 and image.height >= 300
    panels = np.asarray(image)[: image.height - 60]  # above the legend
    colours = {tuple(c) for c in panels.reshape(-1, 3)}
    assert PALETTE[0] in colours and PALETTE[1] in colours, "a bold line per model in the panels"
    assert "![training curves](training_curves.png)" in report.read_text()


def test_training_curves_share_the_epoch_axis_when_validation_runs_once(tmp_path):
    """A model validated only after its last epoch (val_interval = epochs): its validation points sit at the right
    end of the left panel, level with the end of the loss curves, not alone at its left edge."""
    losses = [(epoch, 1.0 / epoch) for epoch in range(1, 13)]
    curves = {"m": {k: FoldCurves(val_dice=[(12, 0.8 + 0.05 * k)], train_loss=losses) for k in range(2)}}
    pixels = np.asarray(Image.open(write_training_curves(tmp_path / "curves.png", curves)).convert("RGB"))
    panel_width = pixels.shape[1] // 2
    _, columns = np.nonzero(np.all(pixels[40:480, :panel_width] == PALETTE[0], axis=-1))
    assert columns.size, "the mean validation point is drawn"
    plot_left, plot_right = 70, panel_width - 12  # the plot box of draw_panel
    assert columns.min() > plot_left + 0.9 * (plot_right - plot_left), f"validation drawn at x {columns.min()}"
    _, loss_columns = np.nonzero(np.all(pixels[40:480, panel_width:] == PALETTE[0], axis=-1))
    assert loss_columns.max() > plot_left + 0.9 * (plot_right - plot_left) and loss_columns.min() < 0.3 * panel_width


def test_fold_curves_per_epoch(report):
    curves = fold_curves(report.parents[1] / "vivim_tiny" / "fold_1")
    assert curves.val_dice == [(e, pytest.approx(v)) for e, v in enumerate(VAL_DICE[1], start=1)]
    expected = [np.mean(LOSSES[1][i : i + 2]) for i in (0, 2, 4)]
    assert curves.train_loss == [(e, pytest.approx(v)) for e, v in enumerate(expected, start=1)]
    loss = [(step, 0.0, float(step)) for step in range(1, 7)]
    assert loss_per_epoch(loss, [], epochs=3) == [(1, 1.5), (2, 3.5), (3, 5.5)], "no validation: configured epochs"
    assert loss_per_epoch(loss, []) == [] and loss_per_epoch(loss, [], epochs=4) == [], "epochs unknown"


def test_examples_png_with_a_missing_checkpoint(report):
    image = Image.open(report.parent / "examples.png")
    assert image.width >= 4 * 256 and image.height >= 200, "input, ground truth and a tile per model"
    text = report.read_text()
    assert "![examples](examples.png)" in text
    assert "per_frame_unet_small: skipped, no checkpoint" in text
    assert "vivim_tiny: skipped" not in text


def test_predict_case_is_the_evaluation_pipeline(report):
    output = report.parents[1]
    run = load_run(output / "vivim_tiny", "vivim_tiny")
    entry = load_datalist(output / "datalist_folds.json", fold=0, split="val")[0]
    pred = predict_case(run, output / "datalist_folds.json", entry, fold=0)
    assert pred.shape == (192, 256, 6), "original frame geometry, every frame"
    assert set(np.unique(pred).tolist()) <= {0, 1}


def test_examples_false_and_missing_models(tmp_path, phantom):
    output = build_output(tmp_path, phantom, checkpoint=False)
    report = write_comparison(output, [*MODELS, "ghost"], dataset_config=phantom[1], examples=False)
    assert report == output / "report" / "comparison.md"
    assert not (output / "report" / "examples.png").exists()
    text = report.read_text()
    assert "Example predictions" not in text
    assert "ghost: no evaluated fold" in text and "ghost: parameters not counted" in text
    rows = read_rows(report)
    assert rows["ghost"]["dice_mean"] == "nan" and rows["ghost"]["parameters"] == "nan"
    assert float(rows["vivim_tiny"]["dice_mean"]) == pytest.approx(0.85)
    assert (output / "report" / "training_curves.png").is_file()


def test_examples_skip_every_model_without_checkpoint(tmp_path, phantom):
    output = build_output(tmp_path, phantom, checkpoint=False)
    text = write_comparison(output, list(MODELS), dataset_config=phantom[1]).read_text()
    for model in MODELS:
        assert f"{model}: skipped, no checkpoint" in text
    assert Image.open(output / "report" / "examples.png").width >= 4 * 256


def test_frame_dice_counts_foreground_classes_only():
    from vivim_monai.experiments.examples import frame_dice

    truth = np.zeros((8, 8), dtype=np.int64)
    truth[2:6, 2:6] = 1
    assert frame_dice(np.zeros_like(truth), truth) == 0.0, "an empty prediction scores 0, background not counted"
    assert frame_dice(truth, truth) == 1.0
    half = truth.copy()
    half[2:4, 2:6] = 0
    assert math.isclose(frame_dice(half, truth), 2 * 8 / (8 + 16))
    assert math.isnan(frame_dice(np.zeros_like(truth), np.zeros_like(truth)))
    assert frame_dice(truth * 2, truth * 2) == 1.0, "class 1, absent from both, is not scored"


def _write_fold_tables(folder: Path, cases: dict[str, list[float]]) -> None:
    """``eval/metrics_per_video.csv`` / ``metrics_per_frame.csv`` with the given per-frame lumen Dice per case."""
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "metrics_summary.json").write_text(json.dumps(summary(NUMBERS["vivim_tiny"][0])))
    with open(folder / "eval" / "metrics_per_video.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "n_frames", "frame_order", "dice_background", "dice_lumen", "dice_fg_mean"])
        for case, values in cases.items():
            finite = [v for v in values if not math.isnan(v)]
            writer.writerow([case, len(values), "temporal", 0.99, sum(finite) / len(finite), sum(finite) / len(finite)])
    with open(folder / "eval" / "metrics_per_frame.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "frame", "dice_background", "dice_lumen"])
        for case, values in cases.items():
            writer.writerows([case, frame, 0.99, value] for frame, value in enumerate(values))


def test_paired_cases_table_counts_frames_better_tied_worse(tmp_path):
    from vivim_monai.experiments.cases import paired_cases_markdown

    _write_fold_tables(tmp_path / "with" / "fold_0", {"a": [0.9, 0.8, 0.7], "b": [0.5, float("nan")]})
    _write_fold_tables(tmp_path / "without" / "fold_0", {"a": [0.8, 0.8, 0.9], "b": [0.6, 0.4]})
    text = paired_cases_markdown(load_run(tmp_path / "with", "with"), load_run(tmp_path / "without", "without"))
    assert "| 0 | a | 3 | 0.800 | 0.833 | -0.033 | 1 / 1 / 1 |" in text
    assert "| 0 | b | 2 | 0.500 | 0.500 | +0.000 | 0 / 0 / 1 |" in text  # the NaN frame counts nowhere
    assert "All frames: with better in 1, tied (±0.005) in 1, worse in 2." in text


def test_jaccard_counting_frames_empty_in_both_as_one(tmp_path, phantom):
    """Frames where a class is absent from both masks (NaN Jaccard) count 1 in this column and nowhere in Jaccard."""
    output = build_output(tmp_path, phantom, checkpoint=False)
    # fold 0 of vivim_tiny, two foreground classes: frame means (0.5 + 1) / 2, (1 + 1) / 2, (0.2 + 0.4) / 2
    rows = [("a", 0, 0.5, "nan"), ("a", 1, "nan", "nan"), ("b", 0, 0.2, 0.4)]
    with open(output / "vivim_tiny" / "fold_0" / "eval" / "metrics_per_frame.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "frame", "jaccard_background", "jaccard_glottis", "jaccard_vocal_fold"])
        writer.writerows([case, frame, 0.99, first, second] for case, frame, first, second in rows)
    expected = (0.75 + 1.0 + 0.3) / 3
    run = load_run(output / "vivim_tiny", "vivim_tiny")
    assert jaccard_empty_as_one(run) == {0: pytest.approx(expected)}, "fold 1 has no per-frame table"
    report = write_comparison(output, list(MODELS), examples=False)
    table = read_rows(report)
    assert float(table["vivim_tiny"]["jaccard_empty_as_one_mean"]) == pytest.approx(expected, abs=1e-6)
    assert table["vivim_tiny"]["jaccard_empty_as_one_n"] == "1"
    tiny_row = next(line for line in report.read_text().splitlines() if line.startswith("| vivim_tiny | "))
    assert f"| {expected:.3f} (1/2 folds) |" in tiny_row


def test_cross_validation_timing_keeps_times_another_process_wrote(tmp_path):
    """Folds run side by side (``--folds 0``, ``--folds 1``) both rewrite cv_timing.json; neither loses the other's."""
    cross_validate = load_script("cross_validate")
    cross_validate._write_timing(tmp_path, {"train_fold_0": 1.0}, [], {})  # process A, fold 0 training done
    cross_validate._write_timing(tmp_path, {"train_fold_1": 2.0}, [], {})  # process B started before A wrote
    cross_validate._write_timing(tmp_path, {"train_fold_0": 1.0, "evaluate_fold_0": 3.0}, [], {})  # A again
    seconds = json.loads((tmp_path / "cv_timing.json").read_text())["seconds"]
    assert seconds == {"train_fold_0": 1.0, "train_fold_1": 2.0, "evaluate_fold_0": 3.0}


_TIMING_WRITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("cross_validate", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
output, name, seconds = module.Path(sys.argv[2]), sys.argv[3], {}
(output / f"{name}.ready").touch()
while not (output / "go").exists():  # all writers start together
    time.sleep(0.01)
for step in range(int(sys.argv[4])):
    seconds[f"{name}_{step}"] = float(step)
    module._write_timing(output, dict(seconds), [], {})
"""


@pytest.mark.integration
def test_cross_validation_timing_survives_folds_finishing_at_once(tmp_path):
    """Four processes rewriting cv_timing.json as fast as they can (folds side by side at their worst): every time
    each of them wrote is in the final file."""
    script = str(REPO_ROOT / "scripts" / "cross_validate.py")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    writers = [
        subprocess.Popen([sys.executable, "-c", _TIMING_WRITER, script, str(tmp_path), f"fold{k}", "150"], env=env)
        for k in range(4)
    ]
    deadline = time.monotonic() + 300
    while len(list(tmp_path.glob("*.ready"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    assert [writer.wait(timeout=300) for writer in writers] == [0, 0, 0, 0]
    seconds = json.loads((tmp_path / "cv_timing.json").read_text())["seconds"]
    assert sorted(seconds) == sorted(f"fold{k}_{step}" for k in range(4) for step in range(150))


def test_jobs_run_side_by_side_bounded_and_logged(tmp_path):
    """At most ``workers`` jobs at once, each job's output in its own log, a failing job leaves the others running,
    results in the order given."""
    code = (
        "import os, sys, time; open(os.path.join(sys.argv[1], sys.argv[2] + '.start'), 'w').close(); "
        "time.sleep(0.5); print('job', sys.argv[2], 'threads', os.environ.get('OMP_NUM_THREADS')); "
        "open(os.path.join(sys.argv[1], sys.argv[2] + '.end'), 'w').close(); sys.exit(3 if sys.argv[2] == 'b' else 0)"
    )
    names = ["a", "b", "c", "d", "e"]
    jobs = [
        Job(name, [sys.executable, "-c", code, str(tmp_path), name], tmp_path / "logs" / f"{name}.log")
        for name in names
    ]
    results = run_jobs(jobs, 2, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert [r.job.name for r in results] == names
    assert [r.returncode for r in results] == [0, 3, 0, 0, 0]
    for name in names:
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert log.startswith("$ ") and f"job {name} threads 1" in log
    starts = {n: (tmp_path / f"{n}.start").stat().st_mtime for n in names}
    ends = {n: (tmp_path / f"{n}.end").stat().st_mtime for n in names}
    for name in names:  # jobs running when this one started
        running = [other for other in names if starts[other] <= starts[name] < ends[other]]
        assert len(running) <= 2, f"{running} ran at once with 2 workers"
    assert any(starts[n] < ends["a"] for n in names if n != "a"), "nothing ran beside the first job"
    assert threads_per_job(2, cores=2) == 1 and threads_per_job(2, cores=16) == 8 and threads_per_job(4, cores=2) == 1
    with pytest.raises(ValueError, match="at least 1"):
        run_jobs(jobs, 0)


def test_compare_models_runs_each_unfinished_fold_once_side_by_side(tmp_path, phantom, monkeypatch):
    """``--jobs 2``: one single-fold cross_validate run per fold not yet evaluated, with the model's overlays, the
    overrides, its own log and the threads shared; then each model is tabulated without retraining."""
    compare = load_script("compare_models")
    output = build_output(tmp_path, phantom, checkpoint=False)
    (output / "vivim_tiny" / "fold_1" / "eval" / "metrics_summary.json").unlink()
    submitted, tabulated = [], []
    monkeypatch.setattr(parallel, "run_jobs", lambda jobs, workers, env: submitted.append((jobs, workers, env)) or [])
    monkeypatch.setattr(compare.subprocess, "run", lambda command, check, env: tabulated.append((command, env)))
    monkeypatch.delenv("VIVIM_EMBEDDING_CACHE", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(parallel.os, "cpu_count", lambda: 4)
    dataset_config = tmp_path / "dataset.json"
    dataset_config.write_text("{}")
    failed = compare.run_folds_side_by_side(
        output / "datalist_folds.json", output, list(MODELS), dataset_config, ["epochs=2"], 2, rerun=False
    )
    assert failed == []
    [(jobs, workers, env)] = submitted
    assert workers == 2 and env["OMP_NUM_THREADS"] == "2"
    assert [job.name for job in jobs] == ["vivim_tiny fold 1"]  # per_frame_unet_small and fold 0: evaluated
    command = jobs[0].command
    assert command[command.index("--folds") + 1 :][:1] == ["1"] and "--rerun" not in command
    assert command[command.index("--output") + 1] == str(output / "vivim_tiny")
    configs = [command[i + 1] for i, arg in enumerate(command) if arg == "--config"]
    assert configs == [str(dataset_config), str(REPO_ROOT / "configs" / "vivim_tiny.json")]
    assert command[command.index("--set") + 1] == "epochs=2"
    assert jobs[0].log == output / "logs" / "vivim_tiny_fold_1.log"

    submitted.clear()
    compare.run_folds_side_by_side(
        output / "datalist_folds.json", output, ["per_frame_unet_small"], dataset_config, [], 2, rerun=True
    )
    assert [job.name for job in submitted[0][0]] == ["per_frame_unet_small fold 0", "per_frame_unet_small fold 1"]
    assert all("--rerun" in job.command for job in submitted[0][0])

    submitted.clear()
    monkeypatch.chdir(tmp_path)
    argv = [str(phantom[0].parent), "--layout", "carotid", "--dataset-config", str(dataset_config)]
    argv += ["--output", str(output), "--models", *MODELS, "--jobs", "2"]
    monkeypatch.setattr(experiments, "write_comparison", lambda *a, **k: _fake_report(output))
    assert compare.main(argv) == 0
    assert len(submitted) == 1 and [job.name for job in submitted[0][0]] == ["vivim_tiny fold 1"]
    assert [cmd[cmd.index("--output") + 1] for cmd, _ in tabulated] == [str(output / m) for m in MODELS]
    assert not any("--folds" in cmd or "--rerun" in cmd for cmd, _ in tabulated)  # tabulate: all folds, no retraining
    cache = str(output / "embedding_cache")  # MediViSTA's shared cache, given to the runs only
    assert submitted[0][2]["VIVIM_EMBEDDING_CACHE"] == cache and all(
        env["VIVIM_EMBEDDING_CACHE"] == cache for _, env in tabulated
    )
    assert "VIVIM_EMBEDDING_CACHE" not in os.environ, "the comparison must not change its own process's environment"

    monkeypatch.setattr(parallel, "run_jobs", lambda jobs, workers, env: [JobResult(jobs[0], 1, 1.0)])
    assert compare.main(argv) == 1  # a failed fold: no report


def test_reevaluation_evaluates_every_trained_fold_again_and_trains_nothing(tmp_path, phantom, monkeypatch):
    """``--reevaluate``: one evaluate-only bundle run per fold, evaluated or not, under the new overrides (e.g.
    test-time flips); training times are kept; a fold without a trained model stops the run by name."""
    cross_validate, compare = load_script("cross_validate"), load_script("compare_models")
    output = build_output(tmp_path, phantom)  # vivim_tiny: fold 0 trained and evaluated, fold 1 evaluated only
    run = output / "vivim_tiny"
    before = json.loads((run / "cv_timing.json").read_text())["seconds"]
    ran = []
    monkeypatch.setattr(cross_validate, "run_bundle", lambda title, command: ran.append((title, command)) or 7.0)
    argv = [str(output / "datalist_folds.json"), "--output", str(run), "--set", "test_time_flips=[0,1]"]
    assert cross_validate.main([*argv, "--folds", "0", "--reevaluate"]) == 0
    [(title, command)] = ran
    assert title == "evaluate fold 0 again"
    configs = json.loads(command[command.index("--config_file") + 1])
    assert [Path(c).name for c in configs] == ["train.json", "evaluate.json"], "evaluation only, no training run"
    assert command[command.index("--test_time_flips") + 1] == "[0, 1]"
    assert command[command.index("--bundle_root") + 1] == str(run / "fold_0")
    timing = json.loads((run / "cv_timing.json").read_text())
    assert timing["seconds"] == {**before, "evaluate_fold_0": 7.0}, "training times kept, the evaluation replaced"
    assert timing["overrides"] == {"test_time_flips": [0, 1]}
    with pytest.raises(SystemExit, match=r"fold_1/models/model\.pt: fold 1 has no trained model"):
        cross_validate.main([*argv, "--folds", "1", "--reevaluate"])

    # side by side: fold 1 is evaluated again by another process while this one evaluates fold 0; neither run's
    # new time may be overwritten by the old one the other read at its start
    (run / "fold_1" / "models").mkdir()
    (run / "fold_1" / "models" / "model.pt").write_bytes((run / "fold_0" / "models" / "model.pt").read_bytes())

    def fold_0_while_fold_1_finishes(title, command):
        if title == "evaluate fold 0 again":
            with monkeypatch.context() as inner:
                inner.setattr(cross_validate, "run_bundle", lambda title, command: 9.0)
                cross_validate.main([*argv, "--folds", "1", "--reevaluate"])
        return 8.0

    monkeypatch.setattr(cross_validate, "run_bundle", fold_0_while_fold_1_finishes)
    assert cross_validate.main([*argv, "--folds", "0", "--reevaluate"]) == 0
    seconds = json.loads((run / "cv_timing.json").read_text())["seconds"]
    assert (seconds["evaluate_fold_0"], seconds["evaluate_fold_1"]) == (8.0, 9.0), seconds
    assert seconds["train_fold_1"] == before["train_fold_1"]
    for combined in ("--rerun", "--final"):
        with pytest.raises(SystemExit):
            cross_validate.main([*argv, "--reevaluate", combined])

    submitted = []
    monkeypatch.setattr(parallel, "run_jobs", lambda jobs, workers, env: submitted.append(jobs) or [])
    compare.run_folds_side_by_side(
        output / "datalist_folds.json", output, ["vivim_tiny"], phantom[1], [], 2, rerun=False, reevaluate=True
    )
    assert [job.name for job in submitted[0]] == ["vivim_tiny fold 0", "vivim_tiny fold 1"], "evaluated folds too"
    assert all("--reevaluate" in job.command and "--rerun" not in job.command for job in submitted[0])


def _fake_report(output: Path) -> Path:
    path = output / "report" / "comparison.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("report")
    return path


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_archive_rebuilds_the_same_tables_and_curves_without_checkpoints(tmp_path, phantom):
    """The archive holds no checkpoint, leaves the run untouched, and the report built from it alone has the same
    tables, paired differences and curves as the one built from the full run."""
    output = build_output(tmp_path / "run", phantom)
    (output / "vivim_tiny" / "fold_0" / "eval" / "metrics_per_frame.csv").write_text("case_id,frame,dice\na,0,0.8\n")
    (output / "vivim_tiny" / "fold_0" / "eval" / "prediction.nii.gz").write_bytes(b"not archived")
    original = write_comparison(output, list(MODELS), dataset_config=phantom[1])
    before = _files(output)
    archive = tmp_path / "archive"
    result = archive_results(output, archive)
    assert _files(output) == before
    names = {str(p.relative_to(archive)) for p in result.copied}
    assert names == {str(p.relative_to(archive)) for p in archive.rglob("*") if p.is_file()}
    assert "datalist_folds.json" in names and "report/comparison.csv" in names and "report/examples.png" in names
    assert "vivim_tiny/fold_0/eval/metrics_per_frame.csv" in names
    assert not any(name.endswith((".pt", ".nii.gz")) for name in names)
    assert {f"{m}/fold_{k}/eval/metrics_summary.json" for m in MODELS for k in (0, 1)} <= names
    assert {f"{m}/cv_timing.json" for m in MODELS} <= names
    assert result.total_bytes == sum(len(_files(archive)[name]) for name in names)

    rebuilt = write_comparison(archive, list(MODELS), dataset_config=phantom[1], examples=False)
    assert (rebuilt.parent / "comparison.csv").read_text() == (original.parent / "comparison.csv").read_text()
    for model in MODELS:
        for fold in (0, 1):
            first = fold_curves(output / model / f"fold_{fold}", 3)
            second = fold_curves(archive / model / f"fold_{fold}", 3)
            assert first == second and first.train_loss and first.val_dice  # the curves survive, not just empty


def test_archive_filters_models_and_refuses_big_files_and_bad_places(tmp_path, phantom, monkeypatch):
    import vivim_monai.experiments.archive as archive_module

    output = build_output(tmp_path / "run", phantom, checkpoint=False)
    only = archive_results(output, tmp_path / "one", models=["per_frame_unet_small"])
    names = {str(p.relative_to(tmp_path / "one")) for p in only.copied}
    assert not any(name.startswith("vivim_tiny/") for name in names)
    assert "per_frame_unet_small/cv_timing.json" in names and "datalist_folds.json" in names

    big = output / "vivim_tiny" / "fold_1" / "eval" / "metrics_per_video.csv"
    big.write_text("x" * 20000)
    monkeypatch.setattr(archive_module, "MAX_ARCHIVED_BYTES", 16000)
    result = archive_results(output, tmp_path / "small")
    assert len(result.refused) == 1 and str(big) in result.refused[0] and "20000 bytes" in result.refused[0]
    assert not (tmp_path / "small" / "vivim_tiny" / "fold_1" / "eval" / "metrics_per_video.csv").exists()
    script = load_script("archive_results")
    assert script.main([str(output), str(tmp_path / "again")]) == 1  # a refused file fails the command

    with pytest.raises(ValueError, match="outside the run folder"):
        archive_results(output, output / "archive")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no evaluated fold"):
        archive_results(tmp_path / "empty", tmp_path / "nothing")
    with pytest.raises(SystemExit, match="empty: no evaluated fold"):
        script.main([str(tmp_path / "empty"), str(tmp_path / "nothing")])


def test_compare_models_reruns_a_model_until_every_fold_is_evaluated(tmp_path, phantom):
    """A cv_summary.csv written by ``cross_validate.py --folds 0`` must not make the model look finished."""
    compare = load_script("compare_models")
    output = build_output(tmp_path, phantom, checkpoint=False)
    folds, run = datalist_folds(output / "datalist_folds.json"), output / "vivim_tiny"
    assert folds == [0, 1] and compare.fully_evaluated(run, folds)
    (run / "cv_summary.csv").write_text("metric,class,fold_0,mean,sd\n")
    (run / "fold_1" / "eval" / "metrics_summary.json").unlink()
    assert not compare.fully_evaluated(run, folds) and compare.evaluated_folds(run, folds) == [0]
    assert not compare.fully_evaluated(output / "absent", folds) and not compare.fully_evaluated(run, [])


def test_timing_records_repository_overlays_portably(tmp_path, monkeypatch):
    """cv_timing.json names the repository's overlays relative to it and a user's own by absolute path; both resolve
    from any working folder."""
    mine = tmp_path / "mine.json"
    mine.write_text("{}")
    assert config_record(REPO_ROOT / "configs" / "carotid.json") == "configs/carotid.json"
    assert config_record(mine) == str(mine.resolve())
    run = tmp_path / "run"
    run.mkdir()
    timing = {"seconds": {}, "configs": [config_record(REPO_ROOT / "configs" / "carotid.json"), str(mine)]}
    (run / "cv_timing.json").write_text(json.dumps(timing))
    monkeypatch.chdir(tmp_path)
    configs = [Path(c).resolve() for c in load_run(run, "anything").configs]
    assert configs == [(REPO_ROOT / "configs" / "carotid.json").resolve(), mine.resolve()]


ARCHIVES = REPO_ROOT / "docs" / "results"
MODEL_CARD = REPO_ROOT / "bundle" / "docs" / "README.md"


@pytest.mark.parametrize(
    "archive",
    sorted(p for p in ARCHIVES.iterdir() if (p / "report" / "comparison.csv").is_file()),
    ids=lambda p: p.name,
)
def test_archived_results_rebuild_their_report_and_the_model_card_quotes_them(archive, tmp_path):
    """Every archive under docs/results rebuilds its comparison table alone (no checkpoint, no data), and the model
    card quotes each archived model's per-fold foreground Dice, which the archive's fold summaries hold."""
    copy = tmp_path / archive.name
    shutil.copytree(archive, copy)
    with open(archive / "report" / "comparison.csv", newline="") as handle:
        archived = list(csv.DictReader(handle))
    models = [row["model"] for row in archived]
    rebuilt = write_comparison(copy, models, dataset_config=None, examples=False).parent / "comparison.csv"
    assert rebuilt.read_text() == (archive / "report" / "comparison.csv").read_text()
    assert "`/" not in (archive / "report" / "comparison.md").read_text(), "the report names a machine's folder"
    datalist = archive / "datalist_folds.json"
    if datalist.is_file():  # the data beside the checkout (../shared/data), reached by a relative path
        root = Path(json.loads(datalist.read_text())["root"])
        named = [part for part in root.parts if part != ".."]
        assert not root.is_absolute() and named[:2] == ["shared", "data"], f"{datalist}: root {root} names a machine"
    card = MODEL_CARD.read_text()
    for model in models:
        recorded = json.loads((archive / model / "cv_timing.json").read_text())["configs"]
        assert recorded and not any(Path(c).is_absolute() for c in recorded), f"{model}: {recorded} is not portable"
        run = load_run(copy / model, model)
        dice = [run.summaries[fold]["by_frame"]["dice"]["foreground_mean"] for fold in run.folds]
        quoted = " / ".join(f"{value:.3f}" for value in dice)
        assert quoted in card, f"the model card does not quote {model}'s per-fold Dice {quoted} ({archive.name})"


def _write_frames(path: Path, rows: list[tuple[str, float, float, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "frame", "dice_background", "dice_target", "jaccard_target", "hd95_target"])
        for frame, (case, dice, jaccard, hd95) in enumerate(rows):
            writer.writerow([case, frame, 0.99, dice, jaccard, hd95])


def test_joint_report_per_dataset_over_folds_and_prompt_drops(tmp_path):
    # fold 0: carotid frames 0.8 / 0.6 (mean 0.7), bagls 0.4 and a frame without HD95; fold 1: carotid 0.5 only
    own = {
        0: [("carotid/a", 0.8, 0.67, 10.0), ("carotid/a", 0.6, 0.43, 20.0), ("bagls/v", 0.4, 0.25, float("nan"))],
        1: [("carotid/b", 0.5, 0.33, 30.0)],
    }
    other = {
        0: [("carotid/a", 0.5, 0, 0), ("carotid/a", 0.5, 0, 0), ("bagls/v", 0.6, 0, 0)],
        1: [("carotid/b", 0.5, 0, 0)],
    }
    empty = {
        0: [("carotid/a", 0.7, 0, 0), ("carotid/a", 0.7, 0, 0), ("bagls/v", 0.4, 0, 0)],
        1: [("carotid/b", 0.2, 0, 0)],
    }
    for fold in (0, 1):
        for mode, rows in (("own", own), ("other", other), ("empty", empty)):
            _write_frames(tmp_path / f"fold_{fold}" / "prompt_sensitivity" / mode / "metrics_per_frame.csv", rows[fold])
    (tmp_path / "fold_2" / "eval").mkdir(parents=True)  # a fold without the sensitivity runs is left out

    means = per_dataset_means(
        tmp_path / "fold_0/prompt_sensitivity/own/metrics_per_frame.csv", ["dice_target", "hd95_target"]
    )
    assert means["carotid"] == {"dice_target": (pytest.approx(0.7), 2), "hd95_target": (15.0, 2)}
    assert means["bagls"] == {"dice_target": (0.4, 1)}  # its only frame has no HD95
    results = joint_fold_results(tmp_path)
    assert sorted(results) == [0, 1]
    assert results[0]["carotid"]["dice_target"] == pytest.approx(0.7)
    assert results[0]["carotid"]["drop_other"] == pytest.approx(0.2)
    assert results[0]["bagls"]["drop_other"] == pytest.approx(-0.2)
    assert results[1]["carotid"]["drop_empty"] == pytest.approx(0.3)
    markdown = joint_report(tmp_path)
    # carotid Dice over folds: 0.7 and 0.5 -> 0.600 ± 0.141; drop with an empty prompt 0.0 and 0.3 -> +0.150 ± 0.212
    assert (
        "| carotid | 2 | 0.600 ± 0.141 | 0.440 ± 0.156 | 22.500 ± 10.607 | +0.100 ± 0.141 (worse in 1/2) |" in markdown
    )
    assert "+0.150 ± 0.212 (worse in 1/2) |" in markdown
    assert "| bagls | 1 | 0.400 | 0.250 | n/a | -0.200 (worse in 0/1) | +0.000 (worse in 0/1) |" in markdown
    assert "| 0 | bagls | 1 | 0.400 | 0.250 | n/a | -0.200 | +0.000 |" in markdown
    with pytest.raises(FileNotFoundError, match="prompt_sensitivity"):
        joint_report(tmp_path / "fold_2")

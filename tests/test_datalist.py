"""Folder layouts -> datalists -> folds -> loaded entries; scripts/make_datalist.py and scripts/make_folds.py."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, manifest, shared_dir
from PIL import Image

from vivim_monai.data import (
    CineReadError,
    assign_folds,
    datalist_folds,
    discover_cases,
    load_datalist,
    write_datalist,
    write_phantom_case,
)
from vivim_monai.data.folds import quantile_bins
from vivim_monai.transforms import LoadCined


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)


def _ovarian_tree(root, cases=("c1", "c2", "c3"), frames=4):
    for case in cases:
        for video in ("v1", "v2"):
            for t in (10, 9, 1, 2)[:frames]:  # natural order 1, 2, 9, 10 (lexicographic would be 1, 10, 2, 9)
                folder = root / case / video / f"frame_{t}"
                _png(folder / "frame.png", np.full((16, 16), t))
                solid = np.pad(np.full((4, 4), 255), 6) if t % 2 else np.zeros((16, 16))
                _png(folder / "background.png", 255 - solid if t == 1 else np.full((16, 16), 255))  # t=9: a tie
                if t % 2:
                    _png(folder / "solid.png", solid)
                    _png(folder / "fan.png", np.full((16, 16), 255))
        _png(root / case / "notes" / "frame.png", np.zeros((16, 16)))  # not annotated: ignored
    with open(root / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["clinical_case", "histological"])
        writer.writerows([[c, "benign" if i % 2 else "malignant"] for i, c in enumerate(cases)])


def test_ovarian_layout_one_entry_per_video_in_natural_order(tmp_path):
    root = tmp_path / "raw"
    _ovarian_tree(root)
    entries = discover_cases(root, "ovarian", metadata_csv=root / "cases.csv")
    assert [e["case_id"] for e in entries] == ["c1/v1", "c1/v2", "c2/v1", "c2/v2", "c3/v1", "c3/v2"]
    first = entries[0]
    assert first["group"] == "c1" and first["histological"] == "malignant" and first["label_format"] == "class_masks"
    assert [p.split("/")[2] for p in first["image"]] == ["frame_1", "frame_2", "frame_9", "frame_10"]
    assert first["n_frames"] == 4 and first["class_frames"] == [4, 1, 0] and len(first["fan"]) == 2
    path = tmp_path / "lists" / "ovarian.json"
    write_datalist(path, entries, root, "ovarian", ("background", "solid", "non-solid"))
    loaded = load_datalist(path)
    sample = LoadCined()(loaded[0])
    assert sample["image"].shape == (1, 16, 16, 4) and sample["label"].shape == (1, 16, 16, 4)
    np.testing.assert_array_equal(sample["image"][0, 0, 0].numpy(), [1, 2, 9, 10])
    assert sample["label"][0, 8, 8].tolist() == [1, 0, 0, 0], "frame 9's background tie wins (the fork's rule)"
    assert sample["fan"].all()


def test_dicom_layout_with_phantom_labels(tmp_path):
    for index in range(3):
        write_phantom_case(tmp_path / "data", f"case{index}", seed=index, num_frames=5, height=64, width=64)
    (tmp_path / "data" / "notes.txt").write_text("not a cine")
    entries = discover_cases(tmp_path / "data", "dicom")
    assert [e["case_id"] for e in entries] == ["case0.dcm", "case1.dcm", "case2.dcm"]
    assert all(e["label"].endswith("_label.nii.gz") and e["n_frames"] == 5 for e in entries)
    assert entries[0]["group"] == "case0" and entries[0]["modality"] == "US"
    assert entries[0]["class_frames"][0] == 5


def test_bad_layouts_say_what_is_wrong(tmp_path):
    with pytest.raises(CineReadError, match="does not exist"):
        discover_cases(tmp_path / "missing", "carotid")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CineReadError, match="no cases of the 'bagls' layout"):
        discover_cases(tmp_path / "empty", "bagls")
    _png(tmp_path / "car" / "acq" / "images" / "acq_slice_3.png", np.zeros((4, 4)))
    with pytest.raises(CineReadError, match=r"masks/acq_slice_3\.png: mask missing"):
        discover_cases(tmp_path / "car", "carotid")
    with pytest.raises(ValueError, match="layout must be one of"):
        discover_cases(tmp_path, "camus")


def _entries(n_groups=12, per_group=2, seed=0):
    rng = np.random.default_rng(seed)
    entries = []
    for g in range(n_groups):
        for v in range(per_group):
            frames = int(rng.integers(10, 60))
            entries.append(
                {
                    "case_id": f"g{g}/v{v}",
                    "group": f"g{g}",
                    "histological": "benign" if g % 3 else "malignant",
                    "n_frames": frames,
                    "class_frames": [frames, int(rng.integers(0, frames)), int(rng.integers(0, frames))],
                }
            )
    return entries


def test_fold_report_counts_groups_of_the_given_group_key():
    entries = [{**e, "patient": e.pop("group")} for e in _entries()]  # the grouping under another key
    folds, report = assign_folds(entries, 3, group_key="patient")
    for k, summary in enumerate(report["folds"]):
        patients = {e["patient"] for e, f in zip(entries, folds) if f == k}
        assert summary["n_groups"] == len(patients) > 1, "counted from the group_key, not a missing 'group'"


def test_folds_keep_groups_together_and_are_reproducible():
    entries = _entries()
    folds, report = assign_folds(entries, 5, attribute="histological")
    by_group = {}
    for entry, fold in zip(entries, folds):
        by_group.setdefault(entry["group"], set()).add(fold)
    assert all(len(f) == 1 for f in by_group.values()), "no group in two folds"
    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    assert report["seed"] in range(42, 52) and len(report["folds"]) == 5
    assert sum(f["n_entries"] for f in report["folds"]) == len(entries)
    assert (folds, report) == assign_folds(entries, 5, attribute="histological")
    malignant = [
        sum(1 for e, f in zip(entries, folds) if f == k and e["histological"] == "malignant") for k in range(5)
    ]
    assert max(malignant) - min(malignant) <= 2, malignant
    one_seed = {s: assign_folds(entries, 5, seeds=[s])[1]["imbalance"] for s in range(42, 52)}
    assert report["imbalance"] == pytest.approx(min(one_seed.values())) or report["strata"] != ["classes", "frames"]


def test_fold_errors_and_strata_fallback():
    entries = _entries(n_groups=4, per_group=1)
    with pytest.raises(ValueError, match=r"n_folds must be in 2\.\.4"):
        assign_folds(entries, 5)
    with pytest.raises(ValueError, match="attribute 'scanner' missing"):
        assign_folds(entries, 2, attribute="scanner")
    folds, report = assign_folds(entries, 4)
    assert sorted(folds) == [0, 1, 2, 3] and report["strata"] == ["none"]
    np.testing.assert_array_equal(quantile_bins([5, 1, 3, 3, 9], 2), [1, 0, 0, 0, 1])
    assert set(quantile_bins([2, 2, 2], 4)) == {0}


@pytest.mark.integration
def test_scripts_write_datalist_and_folds_and_load_by_fold(tmp_path):
    for index in range(6):
        write_phantom_case(tmp_path / "data", f"case{index}", seed=index, num_frames=4, height=32, width=32)
    datalist, with_folds = tmp_path / "datalist.json", tmp_path / "folds" / "datalist_folds.json"
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    made = run("scripts/make_datalist.py", str(tmp_path / "data"), "--layout", "dicom", "--output", str(datalist))
    assert made.returncode == 0, made.stderr
    before = datalist.read_bytes()
    folded = run("scripts/make_folds.py", str(datalist), "--folds", "3", "--output", str(with_folds))
    assert folded.returncode == 0, folded.stderr
    assert "| fold | entries |" in folded.stdout and datalist.read_bytes() == before, "input datalist untouched"
    document = json.loads(with_folds.read_text())
    assert document["root"] == "../data" and document["folds"]["n_folds"] == 3
    assert with_folds.read_text().startswith('{\n    "name"'), "4-space indented JSON"
    for k in range(3):
        train, val = load_datalist(with_folds, fold=k, split="train"), load_datalist(with_folds, fold=k, split="val")
        assert len(train) + len(val) == 6 and val and not {e["case_id"] for e in train} & {e["case_id"] for e in val}
        assert all(e["fold"] == k for e in val)
    assert load_datalist(with_folds, fold=-1, split="train")[0]["image"] == str(tmp_path / "data" / "case0.dcm")
    assert load_datalist(with_folds, fold=-1, split="val") == [] and len(load_datalist(with_folds, fold=-1)) == 6
    moved = load_datalist(with_folds, root="/elsewhere")
    assert moved[0]["image"] == "/elsewhere/case0.dcm" and moved[0]["case_id"] == "case0.dcm"
    failed = run("scripts/make_folds.py", str(datalist), "--folds", "9", "--output", str(tmp_path / "x.json"))
    assert failed.returncode == 2 and "n_folds must be in 2..6" in failed.stderr
    with pytest.raises(ValueError, match="has no 'fold'"):
        load_datalist(datalist, fold=0, split="val")
    assert datalist_folds(with_folds) == [0, 1, 2]
    with pytest.raises(ValueError, match=re.escape(f"{datalist}: entry case0.dcm has no 'fold'")):
        datalist_folds(datalist)


@pytest.mark.slow
def test_real_carotid_and_bagls_datalists(tmp_path):
    carotid = manifest("carotid-us")
    entries = discover_cases(shared_dir("carotid-us"), "carotid")
    assert [e["case_id"] for e in entries] == [a["acquisition"] for a in carotid["acquisitions"]]
    assert [e["frame_indices"] for e in entries] == [a["slices"] for a in carotid["acquisitions"]]
    assert all(e["class_frames"] == [e["n_frames"]] * 2 for e in entries), "no carotid mask is empty"
    bagls = manifest("bagls")
    entries = discover_cases(shared_dir("bagls"), "bagls")
    assert len(entries) == bagls["n_videos"] and sum(e["n_frames"] for e in entries) == bagls["n_frames"]
    empty = {v["folder"]: v["n_empty_masks"] for v in bagls["videos"]}
    assert all(e["n_frames"] - e["class_frames"][1] == empty[e["case_id"]] for e in entries)
    assert all(e["frame_order"] == "unknown" and e["camera"] for e in entries)
    folds, report = assign_folds(entries, 5, attribute="camera")
    assert len(set(folds)) == 5 and report["strata"][0] == "attribute"
    path = tmp_path / "bagls.json"
    write_datalist(path, entries, shared_dir("bagls"), "bagls", ("background", "glottis"))
    sample = LoadCined()(load_datalist(path)[0])
    video = bagls["videos"][0]
    assert sample["image"].shape == (3, *video["resolution_hw"], 50)
    assert int((sample["label"] > 0).flatten(1, 2).sum(1).ne(0).sum()) == 50 - video["n_empty_masks"]

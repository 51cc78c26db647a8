"""VTUS layout (``Train/<video>/<n>.jpg`` + ``Train_GT``) and temporal-block folds with a leakage guard.

Block sizes: ``n // n_blocks`` frames each, the remainder one frame apiece to the last blocks (20 frames in 3 blocks:
6, 7, 7; 13: 4, 4, 5; 91: 30, 30, 31). Expected frame sets are written out by hand, not computed by the code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import load_script, manifest, shared_dir
from PIL import Image

from vivim_monai.data import CineReadError, assign_temporal_blocks, discover_cases, load_datalist, write_datalist
from vivim_monai.transforms import LoadCined

CLASSES = ("background", "nodule")


def _vtus_tree(root, videos):
    """``{"<split>/<video>": n_frames}``: frames ``1.jpg..n.jpg`` (unpadded, so lexicographic order would be wrong)
    with a 6x6 nodule at column ``t`` of frame ``t``; video ``0002`` has an empty mask on its last frame."""
    for name, n_frames in videos.items():
        split, video = name.split("/")
        for t in range(1, n_frames + 1):
            image, mask = np.full((32, 32, 3), 40, np.uint8), np.zeros((32, 32), np.uint8)
            if not (video == "0002" and t == n_frames):
                mask[10:16, t : t + 6] = 255
            image[mask > 0] = 200
            for folder, array, suffix in ((split, image, "jpg"), (f"{split}_GT", mask, "png")):
                (root / folder / video).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / video / f"{t}.{suffix}")
    return root


def _frames(entries):
    """``{group: sorted frame numbers}`` of loaded entries, checking paths and ``frame_indices`` agree."""
    frames = {}
    for entry in entries:
        assert [int(p.rsplit("/", 1)[1].split(".")[0]) for p in entry["image"]] == entry["frame_indices"]
        assert [int(p.rsplit("/", 1)[1].split(".")[0]) for p in entry["label"]] == entry["frame_indices"]
        assert entry["n_frames"] == len(entry["image"])
        frames.setdefault(entry["group"], []).extend(entry["frame_indices"])
    return {group: sorted(numbers) for group, numbers in frames.items()}


def _span(first, last):
    return list(range(first, last + 1))


def test_vtus_layout_entries_in_natural_frame_order(tmp_path):
    root = _vtus_tree(tmp_path / "vtus", {"Train/0001": 20, "Train/0002": 13, "Test/0003": 5})
    (root / "Train" / "0001" / "notes.txt").write_text("not a frame")
    entries = discover_cases(root, "vtus")
    assert [e["case_id"] for e in entries] == ["Train/0001", "Train/0002", "Test/0003"]
    assert [e["group"] for e in entries] == ["0001", "0002", "0003"]
    assert [e["split"] for e in entries] == ["Train", "Train", "Test"]
    first = entries[0]
    assert first["image"][:3] == ["Train/0001/1.jpg", "Train/0001/2.jpg", "Train/0001/3.jpg"]
    assert first["image"][9] == "Train/0001/10.jpg" and first["label"][9] == "Train_GT/0001/10.png"
    assert first["frame_indices"] == _span(1, 20)
    assert first["label_format"] == "binary" and first["frame_order"] == "temporal"
    assert [(e["n_frames"], e["class_frames"]) for e in entries] == [(20, [20, 20]), (13, [13, 12]), (5, [5, 5])]
    path = tmp_path / "vtus.json"
    write_datalist(path, entries, root, "vtus", CLASSES)
    sample = LoadCined()(load_datalist(path)[0])
    assert sample["image"].shape == (3, 32, 32, 20) and sample["label"].shape == (1, 32, 32, 20)
    columns = [int(np.flatnonzero(sample["label"][0, 12, :, i].numpy())[0]) for i in range(20)]
    assert columns == _span(1, 20), "the nodule moves one column per frame: frames load in time order"


def test_vtus_missing_mask_is_named(tmp_path):
    root = _vtus_tree(tmp_path / "vtus", {"Train/0001": 12})
    (root / "Train_GT" / "0001" / "10.png").unlink()
    with pytest.raises(CineReadError, match=r"Train_GT/0001/10\.png: mask missing for its frame \(1 missing"):
        discover_cases(root, "vtus")
    (root / "Train" / "0001" / "cover.jpg").write_bytes((root / "Train" / "0001" / "1.jpg").read_bytes())
    (root / "Train_GT" / "0001" / "cover.png").write_bytes((root / "Train_GT" / "0001" / "1.png").read_bytes())
    (root / "Train" / "0001" / "10.jpg").unlink()
    with pytest.raises(CineReadError, match=r"cover\.jpg: VTUS frame name must be its frame number"):
        discover_cases(root, "vtus")


def test_temporal_blocks_are_contiguous_per_video(tmp_path):
    entries = discover_cases(_vtus_tree(tmp_path / "vtus", {"Train/0001": 20, "Train/0002": 13}), "vtus")
    blocks = assign_temporal_blocks(entries, 3, 1)
    assert [b["case_id"] for b in blocks] == [f"Train/000{v}#block{k}" for v in (1, 2) for k in range(3)]
    assert [b["frame_indices"] for b in blocks] == [
        _span(1, 6),
        _span(7, 13),
        _span(14, 20),
        _span(1, 4),
        _span(5, 8),
        _span(9, 13),
    ]
    assert [b["n_frames"] for b in blocks] == [6, 7, 7, 4, 4, 5]
    assert blocks[1]["image"] == [f"Train/0001/{t}.jpg" for t in _span(7, 13)]
    assert blocks[1]["label"] == [f"Train_GT/0001/{t}.png" for t in _span(7, 13)]
    assert [(b["fold"], b["block"], b["n_blocks"], b["temporal_guard"], b["group"]) for b in blocks[3:]] == [
        (k, k, 3, 1, "0002") for k in range(3)
    ]
    assert [b["class_frames"] for b in blocks[:3]] == [[6, 6], [7, 7], [7, 7]], "every frame has a nodule"
    assert all("class_frames" not in b for b in blocks[3:]), "0002's empty mask is in an unknown block: dropped"
    assert entries[0]["n_frames"] == 20 and "block" not in entries[0], "input entries untouched"


def test_temporal_block_folds_guard_the_validation_block(tmp_path):
    root = _vtus_tree(tmp_path / "vtus", {"Train/0001": 20, "Train/0002": 13})
    path = tmp_path / "folds.json"
    write_datalist(path, assign_temporal_blocks(discover_cases(root, "vtus"), 3, 1), root, "vtus", CLASSES)
    expected_train = {
        0: {"0001": _span(8, 20), "0002": _span(6, 13)},
        1: {"0001": _span(1, 5) + _span(15, 20), "0002": _span(1, 3) + _span(10, 13)},
        2: {"0001": _span(1, 12), "0002": _span(1, 7)},
    }
    expected_val = {
        0: {"0001": _span(1, 6), "0002": _span(1, 4)},
        1: {"0001": _span(7, 13), "0002": _span(5, 8)},
        2: {"0001": _span(14, 20), "0002": _span(9, 13)},
    }
    for k in range(3):
        train, val = load_datalist(path, fold=k, split="train"), load_datalist(path, fold=k, split="val")
        assert _frames(train) == expected_train[k], k
        assert _frames(val) == expected_val[k], k
        for group, frames in _frames(val).items():
            gap = min(abs(t - v) for t in _frames(train)[group] for v in frames)
            assert gap == 2, f"fold {k}: training frames of {group} come within the guard of validation"
        assert _frames(load_datalist(path, fold=k, split="all")) == {"0001": _span(1, 20), "0002": _span(1, 13)}
    assert _frames(load_datalist(path, fold=-1, split="train")) == {"0001": _span(1, 20), "0002": _span(1, 13)}
    assert load_datalist(path, fold=-1, split="val") == []
    trimmed = next(e for e in load_datalist(path, fold=1, split="train") if e["case_id"] == "Train/0001#block0")
    assert trimmed["class_frames"] == [5, 5] and LoadCined()(trimmed)["image"].shape == (3, 32, 32, 5)


def test_temporal_block_errors(tmp_path):
    entries = discover_cases(_vtus_tree(tmp_path / "vtus", {"Train/0001": 20, "Train/0002": 13}), "vtus")
    with pytest.raises(ValueError, match=r"'Train/0002' has 13 frames; 3 blocks with a guard of 2 need at least 15"):
        assign_temporal_blocks(entries, 3, 2)
    assert len(assign_temporal_blocks(entries, 3, 0)) == 6
    with pytest.raises(ValueError, match="n_blocks >= 2"):
        assign_temporal_blocks(entries, 1, 0)
    with pytest.raises(ValueError, match="list of frames in time order"):
        assign_temporal_blocks([{**entries[0], "frame_order": "unknown"}], 2, 0)
    with pytest.raises(ValueError, match="already temporal block 0"):
        assign_temporal_blocks(assign_temporal_blocks(entries, 2, 1), 2, 1)


def test_scripts_make_temporal_block_folds(tmp_path, capsys):
    root = _vtus_tree(tmp_path / "vtus", {"Train/0001": 20, "Train/0002": 13})
    datalist, folded = tmp_path / "vtus.json", tmp_path / "out" / "vtus_folds.json"
    assert load_script("make_datalist").main([str(root), "--layout", "vtus", "--output", str(datalist)]) == 0
    make_folds = load_script("make_folds").main
    assert make_folds([str(datalist), "--temporal-blocks", "3", "--guard", "1", "--output", str(folded)]) == 0
    assert "3 temporal blocks per video, guard 1 frames" in capsys.readouterr().out
    document = json.loads(folded.read_text())
    assert {k: document["folds"][k] for k in ("method", "n_folds", "n_blocks", "guard", "n_videos")} == {
        "method": "temporal_blocks",
        "n_folds": 3,
        "n_blocks": 3,
        "guard": 1,
        "n_videos": 2,
    }
    assert document["numTraining"] == 6 and document["root"] == "../vtus"
    assert [f["n_frames"] for f in document["folds"]["folds"]] == [10, 11, 12]
    assert _frames(load_datalist(folded, fold=1, split="train"))["0001"] == _span(1, 5) + _span(15, 20)
    for extra in (["--folds", "3"], ["--attribute", "split"]):
        with pytest.raises(SystemExit):
            make_folds([str(datalist), "--temporal-blocks", "3", *extra, "--output", str(tmp_path / "x.json")])
        assert "--temporal-blocks excludes the k-fold options" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        make_folds([str(datalist), "--guard", "2", "--output", str(tmp_path / "x.json")])
    assert "--guard needs --temporal-blocks" in capsys.readouterr().err
    assert make_folds([str(datalist), "--temporal-blocks", "3", "--guard", "2", "--output", str(tmp_path / "x.json")])
    assert "need at least 15" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
    compare = load_script("compare_models").make_folded_datalist(root, "vtus", tmp_path / "cmp", 4, None, 3, 1)
    assert json.loads(compare.read_text())["folds"]["method"] == "temporal_blocks"
    assert _frames(load_datalist(compare, fold=0, split="val")) == {"0001": _span(1, 6), "0002": _span(1, 4)}


@pytest.mark.slow
def test_real_vtus_video_three_blocks_guard_three(tmp_path):
    folder = shared_dir("vtus")
    files = [f["path"] for f in manifest("vtus")["files"]]
    entries = discover_cases(folder, "vtus")
    assert [e["case_id"] for e in entries] == ["Train/0002"]
    video = entries[0]
    assert video["image"] == [p for p in files if p.startswith("Train/")]
    assert video["label"] == [p for p in files if p.startswith("Train_GT/")]
    assert video["n_frames"] == 91 and video["class_frames"] == [91, 91] and video["frame_indices"] == _span(1, 91)
    blocks = assign_temporal_blocks(entries, 3, 3)
    assert [(b["frame_indices"][0], b["frame_indices"][-1], b["n_frames"]) for b in blocks] == [
        (1, 30, 30),
        (31, 60, 30),
        (61, 91, 31),
    ]
    path = tmp_path / "vtus_folds.json"
    write_datalist(path, blocks, folder, "vtus", CLASSES)
    expected_train = {0: _span(34, 91), 1: _span(1, 27) + _span(64, 91), 2: _span(1, 57)}
    expected_val = {0: _span(1, 30), 1: _span(31, 60), 2: _span(61, 91)}
    for k in range(3):
        assert _frames(load_datalist(path, fold=k, split="train")) == {"0002": expected_train[k]}, k
        assert _frames(load_datalist(path, fold=k, split="val")) == {"0002": expected_val[k]}, k
    assert _frames(load_datalist(path, fold=-1, split="train")) == {"0002": _span(1, 91)}
    sample = LoadCined()(load_datalist(path, fold=1, split="val")[0])
    assert sample["image"].shape == (3, 256, 256, 30) and sample["label"].shape == (1, 256, 256, 30)
    assert bool((sample["label"] > 0).flatten(0, 2).any(0).all()), "a nodule on every frame"

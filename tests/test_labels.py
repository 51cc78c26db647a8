"""Labels as one class-index channel aligned with the frames, and LoadCined over datalist entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vivim_monai.data import CineReadError, write_phantom_case
from vivim_monai.data.labels import class_masks_to_index, load_label_cine
from vivim_monai.transforms import FanMaskd, LoadCined


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def test_class_masks_argmax_ties_to_lowest_and_missing_is_empty():
    solid = np.array([[1, 1, 0], [0, 0, 0]], dtype=bool)
    non_solid = np.array([[0, 1, 1], [0, 0, 0]], dtype=bool)
    background = np.array([[1, 0, 0], [0, 0, 0]], dtype=bool)
    index = class_masks_to_index([background, solid, non_solid], (2, 3))
    np.testing.assert_array_equal(index, [[0, 1, 2], [0, 0, 0]])  # bg+solid -> bg, solid+non-solid -> solid
    np.testing.assert_array_equal(class_masks_to_index([None, None, non_solid], (2, 3)), [[0, 2, 2], [0, 0, 0]])


def test_ovarian_frame_folders_become_class_indices(tmp_path):
    frames = []
    for t in range(3):
        folder = tmp_path / f"f{t}"
        _png(folder / "frame.png", np.full((8, 10), 50 * t))
        solid = np.zeros((8, 10))
        solid[2:4, 2 + t : 5 + t] = 255
        _png(folder / "solid.png", solid)
        non_solid = np.zeros((8, 10))
        if t != 1:  # frame 1 has no non-solid mask: the class is absent there
            non_solid[5:7, 1:3] = 255
            _png(folder / "non-solid.png", non_solid)
        _png(folder / "background.png", 255 - solid - non_solid)
        frames.append(folder)
    label = load_label_cine(frames, "class_masks")
    assert label.shape == (1, 8, 10, 3) and label.dtype == torch.uint8
    assert (label[0, 2:4, 3:6, 1] == 1).all() and (label[0, 5:7, 1:3, 0] == 2).all()
    assert not (label[..., 1] == 2).any()
    _png(frames[2] / "solid.png", np.zeros((8, 9)))
    with pytest.raises(CineReadError, match=r"f2/solid\.png: mask of size \(8, 9\) differs from the frame size"):
        load_label_cine(frames, "class_masks", frame_shape=(8, 10))
    with pytest.raises(CineReadError, match="none of the class masks"):
        load_label_cine([tmp_path / "nowhere"], "class_masks")


def test_binary_masks_threshold_and_index_checks(tmp_path):
    masks = [_png(tmp_path / f"{t}_seg.png", np.where(np.arange(12).reshape(3, 4) > t, 255, 0)) for t in range(2)]
    label = load_label_cine(masks, "binary")
    assert set(label.unique().tolist()) == {0, 1} and int(label[..., 0].sum()) == 11 and int(label[..., 1].sum()) == 10
    assert int(load_label_cine(masks, "binary", threshold=254)[..., 1].sum()) == 10
    probabilities = tmp_path / "probabilities.nii.gz"
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((3, 4, 2), 0.5, dtype=np.float32), np.eye(4)), probabilities)
    with pytest.raises(CineReadError, match="non-integer values"):
        load_label_cine(probabilities, "index")
    with pytest.raises(ValueError, match="label_format must be one of"):
        load_label_cine(masks, "onehot")


def test_load_cined_aligns_image_label_and_fan(tmp_path):
    frames, masks = [], []
    for t in range(4):
        frames.append(_png(tmp_path / "images" / f"a_slice_{t}.png", np.full((32, 32, 3), 10 * t)))
        masks.append(_png(tmp_path / "masks" / f"a_slice_{t}.png", np.eye(32) * 255))
    fan = _png(tmp_path / "fan.png", np.pad(np.ones((20, 20)), 6) * 255)
    entry = {
        "image": [str(p) for p in frames],
        "label": [str(p) for p in masks],
        "label_format": "binary",
        "fan": str(fan),
    }
    loaded = LoadCined()(entry)
    assert loaded["image"].shape == (3, 32, 32, 4) and loaded["image"].dtype == torch.float32
    assert loaded["label"].shape == (1, 32, 32, 4) and int(loaded["label"].sum()) == 4 * 32
    assert loaded["fan"].shape == (32, 32) and loaded["fan"].sum() == 400
    masked = FanMaskd(keys="image", image_key="fan")(loaded)
    assert masked["fan"].shape == (1, 32, 32, 4) and masked["fan"].meta["fan_method"] == "image"
    assert entry["image"][0] == str(frames[0]), "the input entry is not modified"

    _png(masks[2], np.zeros((32, 30)))
    with pytest.raises(CineReadError, match=r"a_slice_2\.png: frame of shape"):
        LoadCined()(entry)
    for t in range(4):
        _png(masks[t], np.zeros((30, 32)))
    with pytest.raises(
        CineReadError, match=r"masks/a_slice_0\.png: mask of size \(H, W\) \(30, 32\) differs from its frame"
    ):
        LoadCined()(entry)
    with pytest.raises(CineReadError, match="3 label frames for 4 frames"):
        LoadCined()({"image": entry["image"], "label": [str(_png(m, np.zeros((32, 32)))) for m in masks[:3]]})


def test_load_cined_on_a_phantom_dicom_case(tmp_path):
    case = write_phantom_case(tmp_path, "p0", seed=0, num_frames=6, height=64, width=96)
    loaded = LoadCined()(case)
    assert loaded["image"].shape == (1, 64, 96, 6) and loaded["label"].shape == (1, 64, 96, 6)
    assert set(loaded["label"].unique().tolist()) == {0, 1, 2}
    assert loaded["image"].meta["frame_time_ms"] == 40.0
    torch.testing.assert_close(loaded["label"].affine, loaded["image"].affine)

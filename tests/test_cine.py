"""load_cine and the MONAI reader: DICOM, 2-D+t volumes and frame folders into (C, H, W, T)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import shared_dir
from monai.transforms import LoadImaged
from PIL import Image
from pydicom import examples

from vivim_monai.data import CineReadError, DicomCineReader, load_cine, natural_key


def test_dicom_through_load_cine_and_monai_reader():
    path = str(examples.get_path("ybr_color"))
    direct = load_cine(path)
    assert direct.shape == (3, 240, 320, 30)
    assert direct.meta["frame_time_source"] == "FrameTime"
    loaded = LoadImaged(keys="image", reader=DicomCineReader(), image_only=True)({"image": path})["image"]
    assert loaded.shape == (3, 240, 320, 30), "channel first, frames last: no PydicomReader axis swap"
    assert direct.dtype == torch.uint8 and loaded.dtype == torch.float32, "stored dtype kept; LoadImage casts"
    torch.testing.assert_close(loaded.as_tensor(), direct.as_tensor().float())
    assert loaded.meta["sop_instance_uid"] == direct.meta["sop_instance_uid"]
    assert DicomCineReader().verify_suffix(path) and not DicomCineReader().verify_suffix("clip.nii.gz")


def test_nifti_and_mha_volumes(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (48, 64, 7)).astype(np.float32)  # (H, W, T)
    nib.save(nib.Nifti1Image(frames, np.diag([0.2, 0.3, 40.0, 1.0])), tmp_path / "clip.nii.gz")
    cine = load_cine(tmp_path / "clip.nii.gz")
    assert cine.shape == (1, 48, 64, 7)
    np.testing.assert_array_equal(cine[0].numpy(), frames)
    assert cine.meta["pixel_spacing_mm"] == pytest.approx((0.2, 0.3))
    assert cine.meta["frame_time_ms"] == pytest.approx(40.0)

    rgb = np.random.default_rng(1).integers(0, 255, (5, 32, 40, 3)).astype(np.uint8)  # ITK array order (k, j, i, C)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), str(tmp_path / "clip.mha"))
    cine = load_cine(tmp_path / "clip.mha")
    assert cine.shape == (3, 40, 32, 5)  # (C, i, j, k)
    np.testing.assert_array_equal(cine.numpy(), rgb.transpose(3, 2, 1, 0).astype(np.float32))


def test_frame_folder_in_numeric_order(tmp_path):
    for index in (999, 1069, 5):
        Image.fromarray(np.full((16, 24), index % 256, dtype=np.uint8)).save(tmp_path / f"acq_slice_{index}.png")
    (tmp_path / "notes.txt").write_text("not a frame")
    cine = load_cine(tmp_path)
    assert cine.shape == (1, 16, 24, 3)
    assert [float(cine[0, 0, 0, t]) for t in range(3)] == [5.0, 999 % 256, 1069 % 256]
    assert sorted(["slice_1069", "slice_999"], key=natural_key) == ["slice_999", "slice_1069"]
    assert load_cine(tmp_path / "acq_slice_5.png").shape == (1, 16, 24, 1)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.dcm", "no such file"),
        (lambda d: (d / "empty").mkdir() or d / "empty", "no frame images"),
        (lambda d: (d / "clip.avi").write_bytes(b"RIFF") and d / "clip.avi", "unsupported file type"),
        (lambda d: (d / "bad.nii.gz").write_bytes(b"\x1f\x8b garbage") and d / "bad.nii.gz", "cannot read volume"),
        (lambda d: (d / "bad.dcm").write_bytes(b"\x00" * 200) and d / "bad.dcm", "not a readable DICOM"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(CineReadError, match=message) as caught:
        load_cine(path)
    assert str(path.name) in str(caught.value)


def test_frame_folder_problems(tmp_path):
    Image.fromarray(np.zeros((16, 24), dtype=np.uint8)).save(tmp_path / "1.png")
    Image.fromarray(np.zeros((16, 20), dtype=np.uint8)).save(tmp_path / "2.png")
    with pytest.raises(CineReadError, match=r"2\.png: frame of shape"):
        load_cine(tmp_path)
    (tmp_path / "2.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(CineReadError, match=r"2\.png: unreadable frame image"):
        load_cine(tmp_path)
    volume = np.zeros((2, 3, 4, 5), dtype=np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(volume, isVector=False), str(tmp_path / "four_d.nrrd"))
    with pytest.raises(CineReadError, match="expected a 2-D\\+t volume"):
        load_cine(tmp_path / "four_d.nrrd")


@pytest.mark.slow
def test_shared_carotid_frame_folder():
    folder = shared_dir("carotid-us")
    acquisition = sorted(p for p in folder.iterdir() if p.is_dir())[0]
    cine = load_cine(acquisition / "images")
    names = [p.split("_slice_")[-1] for p in cine.meta["frame_files"]]
    numbers = [int(n.split(".")[0]) for n in names]
    assert numbers == sorted(numbers) and cine.shape[-1] == len(numbers) > 1

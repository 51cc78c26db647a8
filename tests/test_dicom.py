"""DICOM cine reading into (C, H, W, T), checked against pydicom's own decoding."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import manifest, shared_dir
from pydicom import examples
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG4HP41, JPEG2000Lossless, JPEGLSLossless, RLELossless

from vivim_monai.data import CineReadError, read_dicom_cine, write_phantom_case


def test_pydicom_echo_cine():
    path = examples.get_path("ybr_color")
    cine = read_dicom_cine(path)
    assert cine.shape == (3, 240, 320, 30)
    expected = pydicom.dcmread(path).pixel_array  # (T, H, W, 3) RGB
    np.testing.assert_array_equal(cine.numpy(), expected.transpose(3, 1, 2, 0).astype(np.float32))
    assert cine.meta["frame_time_ms"] == pytest.approx(33.333)
    assert cine.meta["sop_instance_uid"] == str(pydicom.dcmread(path).SOPInstanceUID)


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CineReadError, match="broken.dcm"):
        read_dicom_cine(bad)
    assert issubclass(CineReadError, ValueError)


@pytest.mark.slow
def test_all_shared_cines_load_with_frames_in_order_and_metadata():
    folder = shared_dir("dicom-cine")
    for entry in manifest("dicom-cine"):
        cine = read_dicom_cine(folder / entry["file"])
        colour = entry["samples_per_pixel"] == 3 or entry["photometric"] == "PALETTE COLOR"
        assert cine.shape == (3 if colour else 1, entry["rows"], entry["columns"], entry["number_of_frames"]), entry
        assert 0 <= float(cine.min()) and float(cine.max()) <= 255, entry["file"]
        assert cine.meta["number_of_frames"] == entry["number_of_frames"]
        assert len(cine.meta["ultrasound_regions"]) == len(entry["us_regions"]), entry["file"]
        tissue = [r for r in entry["us_regions"] if r["spatial_format"] == 1 and r["units_x"] == 3]
        if tissue:
            assert cine.meta["pixel_spacing_source"] == "SequenceOfUltrasoundRegions", entry["file"]
            assert cine.meta["pixel_spacing_mm"][1] == pytest.approx(abs(tissue[0]["dx"]) * 10)
        if entry["frame_time_ms"]:
            assert cine.meta["frame_time_ms"] == pytest.approx(entry["frame_time_ms"]), entry["file"]
        assert cine.meta["frame_time_ms"] > 0
        if entry["photometric"] != "PALETTE COLOR":
            last = pydicom.dcmread(folder / entry["file"]).pixel_array.reshape(entry["decoded_shape"])[-1]
            last = last if last.ndim == 3 else last[..., None]
            np.testing.assert_array_equal(cine.numpy()[..., -1], last.transpose(2, 0, 1), err_msg=entry["file"])


def _phantom_dataset(tmp_path, **kwargs):
    case = write_phantom_case(tmp_path, "codec", seed=3, num_frames=4, height=48, width=64, **kwargs)
    return case["image"], pydicom.dcmread(case["image"])


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda s: s.name)
def test_compressed_cines_decode_exactly(tmp_path, syntax):
    path, ds = _phantom_dataset(tmp_path)
    original = ds.pixel_array.copy()
    try:
        ds.compress(syntax)
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - depends on installed encoders
        pytest.skip(f"no {syntax.name} encoder installed: {err}")
    compressed = tmp_path / f"{syntax.name.replace(' ', '_')}.dcm"
    ds.save_as(compressed)
    cine = read_dicom_cine(compressed)
    np.testing.assert_array_equal(cine[0].numpy(), original.transpose(1, 2, 0))


def _broken(tmp_path, name, change):
    path, ds = _phantom_dataset(tmp_path)
    target = tmp_path / name
    change(ds, target, path)
    return target


BROKEN = {
    "truncated": (lambda ds, target, path: target.write_bytes(open(path, "rb").read()[:-5000]), "cannot decode pixel"),
    "no_pixels": (lambda ds, target, _: (ds.__delitem__("PixelData"), ds.save_as(target)), "no pixel data"),
    "zero_frames": (
        lambda ds, target, _: (setattr(ds, "NumberOfFrames", 0), ds.save_as(target)),
        "at least one frame",
    ),
    "video": (  # endoscopy cines often hold H.264 streams: no pydicom decoder
        lambda ds, target, _: (
            setattr(ds.file_meta, "TransferSyntaxUID", MPEG4HP41),
            setattr(ds, "PixelData", encapsulate([b"\x00\x00\x00\x01\x67 not really h264"])),
            ds.save_as(target),
        ),
        "encapsulated video .MPEG-4 AVC/H.264",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_dicom_errors_name_the_file_and_the_problem(tmp_path, case):
    change, message = BROKEN[case]
    target = _broken(tmp_path, f"{case}.dcm", change)
    with pytest.raises(CineReadError, match=message) as caught:
        read_dicom_cine(target)
    assert f"{case}.dcm" in str(caught.value)

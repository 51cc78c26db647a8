"""Output writers: NIfTI round trip through load_cine, DICOM SEG of a real cine read back with pydicom and highdicom,
overlay GIF, per-frame CSV, the per-case writer, atomicity and untouched inputs."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import BUNDLE_LOGGING, file_digest, shared_dir
from PIL import Image
from pydicom import examples
from pydicom.uid import SegmentationStorage

import vivim_monai.io.case as case_module
from vivim_monai.data import load_cine, write_phantom_case
from vivim_monai.io import (
    DEFAULT_CLASS_COLOURS,
    OUTPUT_KINDS,
    area_curves,
    case_id_for,
    frame_areas,
    overlay_frames,
    read_dicom_seg_labels,
    write_area_plot,
    write_case_outputs,
    write_dicom_seg,
    write_frame_csv,
    write_nifti_labels,
    write_overlay_gif,
)
from vivim_monai.io.secondary_capture import cine_bytes
from vivim_monai.utils import atomic_write

pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")


def moving_disks(height: int, width: int, frames: int, empty=(3, 17)) -> np.ndarray:
    """Class 1 disks inside class 2 rings moving across the frames; the frames in ``empty`` have no foreground."""
    yy, xx = np.mgrid[0:height, 0:width]
    labels = np.zeros((height, width, frames), dtype=np.uint8)
    for t in range(frames):
        if t in empty:
            continue
        cy, cx = height * (0.3 + 0.4 * t / frames), width * (0.25 + 0.5 * t / frames)
        radius = np.hypot(yy - cy, xx - cx)
        labels[..., t][radius < 0.2 * height] = 2
        labels[..., t][radius < 0.1 * height] = 1
    return labels


def seg_to_labels(seg: pydicom.Dataset, source: pydicom.Dataset) -> np.ndarray:
    """Rebuild the label volume from the SEG with pydicom only: each frame's segment and referenced source frame."""
    labels = np.zeros((source.Rows, source.Columns, int(source.NumberOfFrames)), dtype=np.uint8)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for index, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        segment = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        frame = int(reference.ReferencedFrameNumber)
        assert item.FrameContentSequence[0].DimensionIndexValues == [segment, frame]
        assert not np.any(labels[..., frame - 1][pixels[index] > 0]), "segments overlap"
        labels[..., frame - 1][pixels[index] > 0] = segment
    return labels


# --- NIfTI ----------------------------------------------------------------------------------------------------------


def test_nifti_round_trip_through_load_cine(tmp_path):
    labels = np.random.default_rng(0).integers(0, 3, size=(20, 24, 7), dtype=np.uint8)
    path = write_nifti_labels(labels[None], tmp_path / "out" / "case_seg.nii.gz", (0.4, 0.5), frame_time_ms=40.0)
    assert path == tmp_path / "out" / "case_seg.nii.gz"
    assert nib.load(path).get_data_dtype() == np.uint8
    back = load_cine(path)
    assert back.shape == (1, 20, 24, 7)
    np.testing.assert_array_equal(back[0].numpy(), labels)
    assert back.meta["pixel_spacing_mm"] == pytest.approx((0.4, 0.5))
    assert back.meta["frame_time_ms"] == pytest.approx(40.0)
    np.testing.assert_array_equal(nib.load(path).get_fdata(), labels)  # MONAI / nibabel see the same axes


def test_nifti_rejects_non_labels(tmp_path):
    with pytest.raises(ValueError, match="argmax"):
        write_nifti_labels(np.full((4, 4, 2), 0.5), tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match="shape"):
        write_nifti_labels(np.zeros((2, 4, 4, 2), np.uint8), tmp_path / "x.nii.gz")
    assert not list(tmp_path.iterdir())


# --- DICOM SEG ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("omit_empty_frames", [False, True])
def test_dicom_seg_of_real_cine_reads_back_equal_to_nifti(tmp_path, omit_empty_frames):
    source_path = Path(examples.get_path("ybr_color"))  # 30-frame RGB echo, JPEG baseline, no frame of reference
    before = file_digest(source_path)
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    frames = int(source.NumberOfFrames)
    labels = moving_disks(source.Rows, source.Columns, frames)
    nifti = write_nifti_labels(labels, tmp_path / "echo_seg.nii.gz")
    seg_path = write_dicom_seg(
        labels, source_path, tmp_path / "echo_seg.dcm", omit_empty_frames=omit_empty_frames, algorithm_version="9.9"
    )
    expected = np.asarray(nib.load(nifti).dataobj)

    seg = pydicom.dcmread(seg_path)
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY" and seg.Modality == "SEG"
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["solid", "non-solid"]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "9.9"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.SeriesInstanceUID != source.SeriesInstanceUID
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert referenced.ReferencedSOPClassUID == source.SOPClassUID
    assert int(seg.NumberOfFrames) == (
        int(sum((labels == k).any(axis=(0, 1)).sum() for k in (1, 2))) if omit_empty_frames else 2 * frames
    )
    np.testing.assert_array_equal(seg_to_labels(seg, source), expected)

    parsed = hd.seg.segread(seg_path)  # highdicom's reader maps SEG frames to the source frames by reference
    assert parsed.get_source_image_uids()[0][2] == source.SOPInstanceUID
    np.testing.assert_array_equal(read_dicom_seg_labels(seg_path, num_frames=frames), expected)
    assert file_digest(source_path) == before


def test_dicom_seg_of_phantom_with_frame_of_reference_and_checks(tmp_path):
    case = write_phantom_case(tmp_path / "in", "p0", seed=3, num_frames=6, height=64, width=64)
    source = pydicom.dcmread(case["image"])
    untouched = pydicom.dcmread(case["image"])
    labels = np.asarray(nib.load(case["label"]).dataobj)
    path = write_dicom_seg(labels, source, tmp_path / "out" / "p0_seg.dcm")
    assert source == untouched  # the caller's dataset is not modified
    seg = pydicom.dcmread(path)
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert "PlanePositionSequence" not in seg.PerFrameFunctionalGroupsSequence[0]
    np.testing.assert_array_equal(seg_to_labels(seg, source), labels)
    np.testing.assert_array_equal(read_dicom_seg_labels(path), labels)

    with pytest.raises(ValueError, match="do not match the source"):
        write_dicom_seg(labels[:32], source, tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match="only 2 classes"):
        write_dicom_seg(labels, source, tmp_path / "bad.dcm", class_names=("background", "lesion"))
    assert not (tmp_path / "bad.dcm").exists()


def test_dicom_seg_of_shared_palette_cine(tmp_path):
    path = shared_dir("dicom-cine") / "US-PAL-8-10x-echo.dcm"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    source = pydicom.dcmread(path, stop_before_pixels=True)
    labels = moving_disks(source.Rows, source.Columns, int(source.NumberOfFrames), empty=(9,))
    seg_path = write_dicom_seg(labels, path, tmp_path / "pal_seg.dcm")
    np.testing.assert_array_equal(seg_to_labels(pydicom.dcmread(seg_path), source), labels)
    np.testing.assert_array_equal(read_dicom_seg_labels(seg_path), labels)


@pytest.mark.integration
def test_bundle_logging_keeps_highdicom_quiet_but_its_warnings(tmp_path):
    """highdicom logs an INFO line per copied module; the bundle's logging.conf shows only its warnings."""
    script = f"""
import logging.config, numpy as np
logging.config.fileConfig({BUNDLE_LOGGING!r}, disable_existing_loggers=False)
from pydicom import examples
from vivim_monai.io import write_dicom_seg
path = examples.get_path("ybr_color")
write_dicom_seg(np.zeros((240, 320, 30), np.uint8), path, {str(tmp_path / "seg.dcm")!r})
logging.getLogger("vivim_monai.inference").info("inference line")
logging.getLogger("highdicom.seg.sop").warning("highdicom warning")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    lines = done.stdout.splitlines()
    assert [line.split(" - ", 1)[1] for line in lines] == [
        "vivim_monai.inference - INFO - inference line",
        "highdicom.seg.sop - WARNING - highdicom warning",
    ]


# --- overlay GIF ----------------------------------------------------------------------------------------------------


def test_overlay_gif_frames_size_timing_and_colour(tmp_path):
    rng = np.random.default_rng(1)
    cine = rng.uniform(40, 200, size=(1, 48, 64, 6)).astype(np.float32)
    labels = np.zeros((48, 64, 6), np.uint8)
    labels[10:30, 20:40, 2] = 1
    labels[5:15, 5:15, 4] = 2
    path = write_overlay_gif(torch.from_numpy(cine), labels, tmp_path / "o.gif", frame_time_ms=41.7, alpha=0.6)
    with Image.open(path) as gif:
        assert gif.n_frames == 6 and gif.size == (64, 48)
        assert gif.info["loop"] == 0 and gif.info["duration"] == 40
        gif.seek(2)
        frame = np.asarray(gif.convert("RGB")).astype(int)
    red, green, blue = frame[20, 30]
    assert red > green + 60 and red > blue + 60  # class 1 is red
    assert abs(frame[45, 60, 0] - frame[45, 60, 1]) < 16  # unlabelled pixels stay grey

    small = write_overlay_gif(cine, labels, tmp_path / "s.gif", frame_time_ms=5.0, max_size=32, frame_step=2)
    with Image.open(small) as gif:
        assert gif.n_frames == 3 and gif.size == (32, 24) and gif.info["duration"] == 20


def test_overlay_display_mapping():
    labels = np.zeros((4, 4, 2), np.uint8)
    sixteen_bit = np.linspace(0, 4000, 32, dtype=np.float32).reshape(1, 4, 4, 2)
    frames = overlay_frames(sixteen_bit, labels)
    assert frames.shape == (2, 4, 4, 3) and frames.min() == 0 and frames.max() == 255
    rgb = np.zeros((3, 4, 4, 2), np.float32)
    rgb[0] = 200
    assert overlay_frames(rgb, labels)[..., 0].min() == 200 and overlay_frames(rgb, labels)[..., 1].max() == 0
    labels[0, 0, 0] = 1
    blended = overlay_frames(np.zeros((1, 4, 4, 2)), labels, class_colours=[(100, 0, 0)], alpha=0.5)
    assert tuple(blended[0, 0, 0]) == (50, 0, 0) and tuple(blended[1, 0, 0]) == (0, 0, 0)
    with pytest.raises(ValueError):
        overlay_frames(np.zeros((1, 4, 4, 3)), labels)


# --- CSV ------------------------------------------------------------------------------------------------------------


def test_frame_csv_values(tmp_path):
    labels = np.zeros((10, 10, 3), np.uint8)
    labels[:2, :5, 0] = 1  # 10 px
    labels[5:, :, 1] = 2  # 50 px
    labels[0, 0, 2] = 1
    names = ("background", "solid", "non-solid")
    np.testing.assert_array_equal(frame_areas(labels, 3), [[90, 10, 0], [50, 0, 50], [99, 1, 0]])
    path = write_frame_csv(labels, tmp_path / "a.csv", names, spacing_mm=(0.5, 0.2), frame_time_ms=40.0)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["frame", "time_ms"] + [f"{n}_area_{u}" for n in names for u in ("px", "mm2")]
    assert [r["frame"] for r in rows] == ["0", "1", "2"]
    assert [float(r["time_ms"]) for r in rows] == [0.0, 40.0, 80.0]
    assert rows[0]["solid_area_px"] == "10" and float(rows[0]["solid_area_mm2"]) == pytest.approx(1.0)
    assert rows[1]["non-solid_area_px"] == "50" and float(rows[1]["non-solid_area_mm2"]) == pytest.approx(5.0)
    assert float(rows[2]["background_area_mm2"]) == pytest.approx(9.9)

    unknown = list(csv.DictReader(write_frame_csv(labels, tmp_path / "u.csv", names).open()))
    assert unknown[1]["non-solid_area_px"] == "50" and unknown[1]["non-solid_area_mm2"] == ""
    assert unknown[1]["time_ms"] == ""
    with pytest.raises(ValueError, match="2 classes"):
        write_frame_csv(labels, tmp_path / "bad.csv", ("background", "solid"))


def test_area_plot_in_mm2_over_seconds_or_pixels_over_frames(tmp_path):
    labels = np.zeros((10, 10, 4), np.uint8)
    labels[:2, :5, 0] = 1  # 10 px
    labels[5:, :, 1:] = 2  # 50 px from frame 1
    times, areas = area_curves(labels, 3, spacing_mm=(0.5, 0.2), frame_time_ms=40.0)
    np.testing.assert_allclose(times, [0.0, 0.04, 0.08, 0.12])
    np.testing.assert_allclose(areas[:, 1:], [[1.0, 0.0], [0.0, 5.0], [0.0, 5.0], [0.0, 5.0]])
    frames, pixels = area_curves(labels, 3)
    np.testing.assert_array_equal(frames, [0, 1, 2, 3])
    np.testing.assert_array_equal(pixels[:, 1:], [[10, 0], [0, 50], [0, 50], [0, 50]])

    names = ("background", "solid", "non-solid")
    path = write_area_plot(labels, tmp_path / "a.png", names, (0.5, 0.2), 40.0, title="case")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] == 760
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=1 << 16)}
    assert set(DEFAULT_CLASS_COLOURS[:2]) <= colours, "one line per foreground class, in its overlay colour"
    unknown = write_area_plot(labels[..., :1], tmp_path / "u.png", names)  # one frame, no spacing or frame time
    assert unknown.is_file() and not list(tmp_path.glob(".*.tmp*"))


# --- per-case outputs -----------------------------------------------------------------------------------------------


@pytest.fixture
def phantom_case(tmp_path):
    case = write_phantom_case(tmp_path / "inputs", "case7", seed=7, num_frames=8, height=64, width=96)
    labels = np.asarray(nib.load(case["label"]).dataobj)
    return case, load_cine(case["image"]), labels


def test_case_outputs_for_a_dicom_cine(tmp_path, phantom_case):
    case, cine, labels = phantom_case
    before = {name: file_digest(case[name]) for name in ("image", "label")}
    outputs = write_case_outputs(cine, torch.from_numpy(labels)[None], tmp_path / "outputs", overlay_max_size=64)
    folder = tmp_path / "outputs" / "case7"
    assert outputs.case_id == "case7" and outputs.folder == folder and not outputs.skipped
    expected = {kind: folder / f"case7{ending}" for kind, ending in OUTPUT_KINDS.items()}
    assert outputs.files == {**expected, "area_plot": folder / "case7_areas.png"}, "no Secondary Capture: a DICOM"
    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in outputs.files.values())
    np.testing.assert_array_equal(load_cine(outputs.files["nifti"])[0].numpy(), labels)
    assert load_cine(outputs.files["nifti"]).meta["pixel_spacing_mm"] == pytest.approx(cine.meta["pixel_spacing_mm"])
    np.testing.assert_array_equal(read_dicom_seg_labels(outputs.files["dicom_seg"]), labels)
    rows = list(csv.DictReader(outputs.files["csv"].open()))
    spacing = cine.meta["pixel_spacing_mm"]
    assert len(rows) == 8 and float(rows[1]["time_ms"]) == pytest.approx(cine.meta["frame_time_ms"])
    assert float(rows[0]["solid_area_mm2"]) == pytest.approx((labels[..., 0] == 1).sum() * spacing[0] * spacing[1])
    with Image.open(outputs.files["overlay"]) as gif:
        assert gif.size == (64, 43) and gif.n_frames == 8
    assert {name: file_digest(case[name]) for name in ("image", "label")} == before


def test_secondary_capture_keeps_8_bit_intensities_and_stretches_others():
    frames, how = cine_bytes(np.arange(24, dtype=np.float32).reshape(3, 2, 2, 2))  # RGB, whole numbers in 0..255
    assert frames.shape == (2, 2, 2, 3) and frames[1, 0, 0].tolist() == [1, 9, 17] and how == "intensities kept"
    frames, how = cine_bytes(np.array([-1.0, 0.5, np.nan, np.inf, 3.0]).reshape(1, 1, 5, 1))
    assert frames.ravel().tolist() == [0, 96, 64, 64, 255] and how.endswith("from [-1, 3] to [0, 255]")
    frames, _ = cine_bytes(np.full((2, 3, 3, 1), 7, np.int16))  # two channels: the first one, as the overlay
    assert frames.shape == (1, 3, 3, 1) and int(frames.max()) == 7


def test_case_outputs_of_a_non_dicom_cine_reference_its_secondary_capture(tmp_path, phantom_case):
    case, _, labels = phantom_case
    volume = load_cine(case["label"])  # any 2-D+t volume stands in for a non-DICOM cine
    outputs = write_case_outputs(volume, labels, tmp_path / "out", kinds=("dicom_seg", "csv"))
    assert case_id_for(case["label"]) == "case7_label" and outputs.case_id == "case7_label"
    assert set(outputs.files) == {"dicom_source", "dicom_seg", "csv", "area_plot"} and not outputs.skipped
    assert outputs.files["dicom_source"].name == "case7_label_cine.dcm"
    secondary = pydicom.dcmread(outputs.files["dicom_source"], stop_before_pixels=True)
    seg = pydicom.dcmread(outputs.files["dicom_seg"])
    assert seg_to_labels(seg, secondary).tolist() == labels.tolist()
    np.testing.assert_array_equal(load_cine(outputs.files["dicom_source"])[0].numpy(), labels)  # the cine's values
    with pytest.raises(ValueError, match="unknown output kinds"):
        write_case_outputs(volume, labels, tmp_path / "out", kinds=("mp4",))


def test_failing_writer_leaves_no_partial_file_and_keeps_previous_outputs(tmp_path, phantom_case, monkeypatch):
    case, cine, labels = phantom_case
    before = file_digest(case["image"])
    first = write_case_outputs(cine, labels, tmp_path / "out", kinds=("nifti", "overlay"))
    previous = {kind: file_digest(path) for kind, path in first.files.items()}

    def broken_gif(*args, **kwargs):
        image_path = args[2]  # write_overlay_gif(cine, labels, path, ...): fail half-way through the file

        def half_write(name):
            Path(name).write_bytes(b"GIF89a-partial")
            raise OSError("disk full")

        return atomic_write(image_path, half_write)

    monkeypatch.setattr(case_module, "write_overlay_gif", broken_gif)
    with pytest.raises(OSError, match="disk full"):
        write_case_outputs(cine, labels[..., ::-1], tmp_path / "out", kinds=("nifti", "overlay", "csv"))
    folder = tmp_path / "out" / "case7"
    assert sorted(p.name for p in folder.iterdir()) == ["case7_overlay.gif", "case7_seg.nii.gz"]  # no temporaries
    assert file_digest(first.files["overlay"]) == previous["overlay"]  # the old GIF is intact, not half-replaced
    assert file_digest(first.files["nifti"]) != previous["nifti"]  # written completely before the failure
    assert file_digest(case["image"]) == before


def test_outputs_never_overwrite_inputs(tmp_path):
    folder = tmp_path / "out" / "x"
    case = write_phantom_case(folder, "x_seg", seed=1, num_frames=2, height=32, width=32)
    cine = load_cine(case["image"])
    with pytest.raises(ValueError, match="overwrite inputs"):
        write_case_outputs(cine, np.zeros((32, 32, 2), np.uint8), tmp_path / "out", case_id="x", kinds=("dicom_seg",))
    assert sorted(p.name for p in folder.iterdir()) == ["x_seg.dcm", "x_seg_label.nii.gz"]


def test_dicom_seg_of_single_frame_source_with_geometry(tmp_path):
    source_path = examples.get_path("ct")  # single-frame CT: frames are referenced by instance, geometry not copied
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    labels = moving_disks(source.Rows, source.Columns, 1, empty=())
    seg = pydicom.dcmread(write_dicom_seg(labels, source, tmp_path / "ct_seg.dcm"))
    reference = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID and "ReferencedFrameNumber" not in reference
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID and int(seg.NumberOfFrames) == 2
    np.testing.assert_array_equal(read_dicom_seg_labels(tmp_path / "ct_seg.dcm"), labels)


def test_case_outputs_check_shapes_before_writing(tmp_path, phantom_case):
    _, cine, labels = phantom_case
    with pytest.raises(ValueError, match="do not match the cine"):
        write_case_outputs(cine, labels[:32], tmp_path / "out")
    assert not (tmp_path / "out").exists()

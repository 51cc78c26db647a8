"""Hostile input: a bounded DICOM fuzzer over the real cines and the phantom, and broken volumes and frame images.

Every mutant must load into a clip that agrees with its header or raise ``CineReadError`` naming the file, within
``TIME_LIMIT_S`` and without huge allocations (see ``fuzzing.py``). The summary (cases, ok, clear errors, crashes,
hangs, wall time, error messages by kind) goes to ``fuzz_summary.json`` in the test's tmp dir and to stdout (``-s``);
``VIVIM_FUZZ_SEED`` picks another seed.
"""

from __future__ import annotations

import os
import struct
import time
import zlib
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import SHARED_DATA, shared_dir
from fuzzing import FAILURES, LoaderWorker, Seed, fuzz, make_seed, set_raw, trimmed, with_syntax, write_summary
from PIL import Image
from pydicom import examples
from pydicom.uid import JPEGBaseline8Bit

from vivim_monai.data import CineReadError, load_cine, load_label_cine, read_dicom_cine, write_phantom_case

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

DEFAULT_CASES = 150
SLOW_CASES = 2000
TIME_LIMIT_S = 10.0
#: Real cines above this size are fuzzed as their first TRIM_FRAMES frames (header kept): decoding a whole 87-frame
#: 743x975 JPEG cine takes seconds, which would bound the run to a few dozen cases.
TRIM_BYTES, TRIM_FRAMES = 600_000, 2


def _seeds(folder: Path, real: Path | None) -> list[Seed]:
    phantom = write_phantom_case(folder, "phantom", seed=0, num_frames=6, height=64, width=64)
    seeds = [
        make_seed("phantom.dcm", Path(phantom["image"]).read_bytes()),
        make_seed("ybr_color.dcm", Path(examples.get_path("ybr_color")).read_bytes()),
    ]
    for path in sorted(real.glob("*.dcm")) if real is not None else []:
        data = path.read_bytes()
        seeds.append(make_seed(path.name, trimmed(data, TRIM_FRAMES) if len(data) > TRIM_BYTES else data))
    return seeds


def _run(tmp_path: Path, seeds: list[Seed], cases: int) -> dict:
    seed = int(os.environ.get("VIVIM_FUZZ_SEED", "0"))
    summary = fuzz(seeds, cases, tmp_path / "cases", seed=seed, time_limit=TIME_LIMIT_S)
    print(write_summary(summary, tmp_path / "fuzz_summary.json"))
    counts = summary["counts"]
    failed = {status: counts[status] for status in FAILURES if counts[status]}
    assert not failed, f"{failed}; first failures: {summary['failures'][:10]}"
    assert counts["ok"] > 0 and counts["clear_error"] > 0, counts  # both paths exercised
    assert sum(counts.values()) == cases
    return summary


def test_fuzz_sample(tmp_path):
    real = SHARED_DATA / "dicom-cine"
    _run(tmp_path, _seeds(tmp_path / "src", real if real.is_dir() else None), DEFAULT_CASES)


@pytest.mark.slow
def test_fuzz_all_real_cines(tmp_path):
    seeds = _seeds(tmp_path / "src", shared_dir("dicom-cine"))
    assert len(seeds) == 10, [s.name for s in seeds]
    summary = _run(tmp_path, seeds, SLOW_CASES)
    assert summary["cases"] >= 1000


def _misbehave(path: str) -> tuple[str, str]:
    if path == "hang":
        time.sleep(60)
    if path == "die":
        os._exit(3)
    try:
        return "ok", f"allocated {np.empty(64 << 30, np.uint8).nbytes} bytes"  # untouched: harmless if uncapped
    except MemoryError:
        return "oom", "allocation refused"


def test_worker_bounds_time_and_memory():
    worker = LoaderWorker(memory_headroom=1 << 30, target=_misbehave)
    try:
        assert worker.run("hang", time_limit=0.5)[0] == "hang"
        assert worker.run("die", time_limit=5)[0] == "crash"
        status = worker.run("allocate", time_limit=5)[0]
        assert status == ("oom" if worker.memory_capped else "ok")
    finally:
        worker.close()


# ---- regressions of what the fuzzer found ------------------------------------------------------------------------


def _phantom(tmp_path: Path) -> tuple[Path, pydicom.Dataset]:
    case = write_phantom_case(tmp_path, "phantom", seed=0, num_frames=6, height=32, width=48)
    return Path(case["image"]), pydicom.dcmread(case["image"])


def _ybr() -> pydicom.Dataset:
    return pydicom.dcmread(examples.get_path("ybr_color"))


BROKEN_DICOM = {  # name: (dataset, edit, message)
    "palette_without_lut": ("phantom", lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"), "PALE"),
    "frames_not_a_number": ("phantom", lambda ds: set_raw(ds, "NumberOfFrames", "IS", b"abc"), "NumberOfFrames is"),
    "frames_huge_jpeg": ("ybr", lambda ds: setattr(ds, "NumberOfFrames", 10**7), "MAX_DECODED_BYTES"),
    "frames_one_too_many_jpeg": ("ybr", lambda ds: setattr(ds, "NumberOfFrames", 31), "fewer fragments"),
    "zero_rows": ("phantom", lambda ds: setattr(ds, "Rows", 0), "zero-size frames"),
    "two_samples": ("phantom", lambda ds: setattr(ds, "SamplesPerPixel", 2), "SamplesPerPixel=2"),
    "unknown_photometric": ("phantom", lambda ds: setattr(ds, "PhotometricInterpretation", "FOO"), "does not fit"),
    "ybr_on_grey": ("phantom", lambda ds: setattr(ds, "PhotometricInterpretation", "YBR_FULL"), "does not fit"),
    "bits_allocated_7": ("phantom", lambda ds: setattr(ds, "BitsAllocated", 7), "BitsAllocated=7"),
    "no_rows": ("phantom", lambda ds: ds.__delitem__("Rows"), "Rows is missing"),
    "unknown_syntax": ("phantom", lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.3.4"), "not a known"),
}


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("case", sorted(BROKEN_DICOM))
def test_broken_image_tags_raise_clear_errors(tmp_path, case):
    source, edit, message = BROKEN_DICOM[case]
    ds = _phantom(tmp_path)[1] if source == "phantom" else _ybr()
    edit(ds)
    target = tmp_path / f"{case}.dcm"
    ds.save_as(target, enforce_file_format=False)
    with pytest.raises(CineReadError, match=message) as caught:
        read_dicom_cine(target)
    assert f"{case}.dcm" in str(caught.value)


def test_native_pixels_under_a_compressed_syntax(tmp_path):
    path, _ = _phantom(tmp_path)
    target = tmp_path / "claims_jpeg.dcm"
    target.write_bytes(with_syntax(make_seed(path.name, path.read_bytes()), JPEGBaseline8Bit))
    with pytest.raises(CineReadError, match="claims_jpeg.dcm: malformed encapsulated pixel data"):
        read_dicom_cine(target)


def test_unusable_timing_and_spacing_fall_back(tmp_path):
    """Malformed optional metadata is ignored (the *_source keys say what was used), never trusted or fatal."""
    path, ds = _phantom(tmp_path)
    set_raw(ds, "FrameTime", "DS", b"-33.3")
    ds.PixelSpacing = [float("nan"), 0.3]
    del ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX
    ds.save_as(tmp_path / "meta.dcm")
    cine = read_dicom_cine(tmp_path / "meta.dcm")
    assert cine.meta["frame_time_source"] == "CineRate" and cine.meta["frame_time_ms"] > 0
    assert cine.meta["pixel_spacing_source"] == "unknown" and "pixel_spacing_mm" not in cine.meta
    set_raw(ds, "FrameTime", "DS", b"abc")
    set_raw(ds, "CineRate", "IS", b"0")
    ds.save_as(tmp_path / "meta.dcm")
    assert read_dicom_cine(tmp_path / "meta.dcm").meta["frame_time_source"] == "default"


# ---- volumes, frame folders and labels -----------------------------------------------------------------------------


def _nifti(path: Path, array: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def _huge_nifti(path: Path) -> Path:
    data = bytearray(_nifti(path, np.zeros((4, 4, 4), np.float32)).read_bytes())
    struct.pack_into("<4h", data, 40, 3, 30000, 30000, 3000)  # dim[0..3] of the header
    path.write_bytes(bytes(data))
    return path


def _mha(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=False), str(path))
    return path


MHA_HEADER = "ObjectType = Image\nNDims = 3\nElementType = MET_UCHAR\n"
BROKEN_VOLUMES = {  # name: (writer, message)
    "four_d.nii.gz": (lambda p: _nifti(p, np.zeros((8, 8, 3, 2), np.float32)), r"found 4 axes"),
    "four_d.mha": (lambda p: _mha(p, np.zeros((2, 3, 8, 8), np.float32)), r"found 4 axes"),
    "nan.nii.gz": (lambda p: _nifti(p, np.full((8, 8, 3), np.nan, np.float32)), "NaN or infinite"),  # ITK reads 0
    "inf.nii": (lambda p: _nifti(p, np.where(np.eye(8)[..., None], np.inf, 1.0).astype(np.float32)), "NaN or inf"),
    "inf.mha": (lambda p: _mha(p, np.full((3, 8, 8), -np.inf, np.float32)), "NaN or infinite"),
    "no_frames.nii.gz": (lambda p: _nifti(p, np.zeros((8, 8, 0), np.float32)), "empty axis"),  # ITK reads 1 frame
    "no_frames.mha": (lambda p: p.write_text(f"{MHA_HEADER}DimSize = 8 8 0\nElementDataFile = LOCAL\n"), "empty axis"),
    "huge_header.nii": (_huge_nifti, "MAX_DECODED_BYTES"),
    "truncated.mha": (
        lambda p: p.write_bytes(_mha(p, np.ones((3, 8, 8), np.float32)).read_bytes()[:-100]),
        "cannot read volume",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_VOLUMES))
def test_broken_volumes_raise_clear_errors(tmp_path, name):
    write, message = BROKEN_VOLUMES[name]
    write(tmp_path / name)
    with pytest.raises(CineReadError, match=message) as caught:
        load_cine(tmp_path / name)
    assert name in str(caught.value)


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header (with a valid CRC) states ``width`` x ``height``; the pixel data is a 1x1 image's."""
    buffer = BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    struct.pack_into(">II", data, 16, width, height)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_frame_folders_with_foreign_and_fake_images(tmp_path):
    for index in range(3):
        Image.fromarray(np.full((8, 10), index, np.uint8)).save(tmp_path / f"{index}.png")
    (tmp_path / "notes.txt").write_text("not a frame")  # other suffixes are not frames: ignored
    (tmp_path / "Thumbs.db").write_bytes(b"\0" * 64)
    assert load_cine(tmp_path).shape == (1, 8, 10, 3)
    bad = {
        "3.png": (b"this is text, not a PNG", "3.png: unreadable frame image"),
        "4.png": (b"", "4.png: unreadable frame image"),
        "5.png": ((tmp_path / "0.png").read_bytes()[:40], "5.png: unreadable frame image"),  # truncated
        "6.png": (_png_claiming(40000, 40000), "6.png: unreadable frame image"),  # decompression bomb
    }
    for name, (data, message) in bad.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CineReadError, match=message):
            load_cine(tmp_path)
        (tmp_path / name).unlink()
    Image.fromarray(np.full((8, 10), 1000, np.uint16)).save(tmp_path / "3.png")  # 16-bit among 8-bit frames
    with pytest.raises(CineReadError, match=r"3\.png: frame of shape \(8, 10, 1\) uint16 differs"):
        load_cine(tmp_path)


def test_unreadable_label_images_name_the_file(tmp_path):
    masks = []
    for index in range(2):
        masks.append(tmp_path / f"mask_{index}.png")
        Image.fromarray(np.zeros((8, 10), np.uint8)).save(masks[-1])
    masks[1].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(CineReadError, match=r"mask_1\.png: unreadable frame image"):
        load_label_cine(masks, label_format="binary")
    frame = tmp_path / "frame_0"
    frame.mkdir()
    Image.fromarray(np.zeros((8, 10), np.uint8)).save(frame / "background.png")
    (frame / "solid.png").write_bytes(b"GIF89a")
    with pytest.raises(CineReadError, match=r"frame_0/solid\.png: unreadable frame image"):
        load_label_cine([frame], label_format="class_masks")
    label = _nifti(tmp_path / "label.nii.gz", np.where(np.eye(8)[..., None], np.nan, 1.0).astype(np.float32))
    with pytest.raises(CineReadError, match="label.nii.gz: volume contains NaN"):
        load_label_cine(label)

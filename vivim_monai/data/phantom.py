"""Synthetic ultrasound cines for demos and tests, written as real Ultrasound Multi-frame DICOM plus NIfTI labels.

A curvilinear fan of Rayleigh speckle with depth attenuation, burned-in text and a depth scale outside the fan, and
a lesion that moves and deforms over time: a bright solid core (class 1) inside a dark non-solid rim (class 2);
background is class 0 (the ovarian-tumour layout). Deterministic for a given seed, a few hundred milliseconds per
cine. The DICOM carries the ultrasound region of the fan (so spacing and the fan box come from the file), frame time
and cine rate, and is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

from vivim_monai.data.datalist import discover_cases, write_datalist
from vivim_monai.data.folds import assign_folds
from vivim_monai.data.labels import OVARIAN_CLASSES
from vivim_monai.utils.atomic import atomic_write

__all__ = ["Phantom", "make_phantom", "make_phantom_data", "write_phantom_case"]


@dataclass
class Phantom:
    image: np.ndarray  # (H, W, T) uint8
    label: np.ndarray  # (H, W, T) uint8 class indices
    fan: np.ndarray  # (H, W) bool
    fan_box: tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)
    spacing_mm: float
    frame_time_ms: float


def make_phantom(
    num_frames: int = 16,
    height: int = 128,
    width: int = 160,
    seed: int = 0,
    spacing_mm: float = 0.4,
    frame_time_ms: float = 40.0,
) -> Phantom:
    """Generate one synthetic cine and its 3-class labels."""
    if num_frames < 1 or height < 32 or width < 32:
        raise ValueError(
            f"phantom needs num_frames >= 1 and frames of at least 32x32, got {num_frames}, {height}x{width}"
        )
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    apex_y, apex_x = -0.15 * height, width / 2.0
    radius = np.hypot(yy - apex_y, xx - apex_x)
    angle = np.degrees(np.arctan2(xx - apex_x, yy - apex_y))
    r0, r1, half_angle = 0.25 * height, 1.05 * height, 38.0
    fan = (radius >= r0) & (radius <= r1) & (np.abs(angle) <= half_angle) & (yy >= 0.12 * height)
    depth = np.clip((radius - r0) / (r1 - r0), 0.0, 1.0)
    tissue = 0.55 + 0.25 * np.sin(xx / 9.0 + rng.uniform(0, 6)) * np.cos(yy / 13.0)  # smooth tissue texture

    overlay = Image.new("L", (width, height), 0)  # burned-in text and depth scale, identical in every frame
    draw = ImageDraw.Draw(overlay)
    draw.text((2, 1), "VIVIM PHANTOM", fill=230)
    draw.text((2, height - 11), f"seed {seed}", fill=200)
    for mark in range(int(0.15 * height), height - 4, max(4, height // 12)):
        draw.rectangle([width - 6, mark, width - 4, mark + 1], fill=255)
    overlay_array = np.asarray(overlay)

    rows, cols = np.where(fan)
    centre_y0, centre_x0 = 0.55 * height, apex_x
    image = np.zeros((height, width, num_frames), dtype=np.uint8)
    label = np.zeros((height, width, num_frames), dtype=np.uint8)
    for t in range(num_frames):
        phase = 2 * np.pi * t / max(num_frames, 8)
        cy = centre_y0 + 0.08 * height * np.sin(phase)
        cx = centre_x0 + 0.12 * width * np.sin(0.5 * phase + 0.3)
        ry, rx = 0.16 * height * (1 + 0.15 * np.sin(phase)), 0.13 * width * (1 - 0.1 * np.cos(phase))
        ellipse = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        lesion, core = (ellipse <= 1.0) & fan, (ellipse <= 0.45) & fan
        label[..., t][lesion] = 2
        label[..., t][core] = 1
        echo = tissue.copy()
        echo[lesion] = 0.12  # non-solid: dark (fluid)
        echo[core] = 0.95  # solid: bright
        speckle = rng.rayleigh(scale=0.65, size=(height, width)).astype(np.float32)
        frame = 255.0 * echo * speckle * np.exp(-1.2 * depth)
        frame = np.where(fan, np.clip(frame, 0, 255), 0)
        frame = np.maximum(frame, overlay_array)
        image[..., t] = frame.astype(np.uint8)
    box = (int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max()))
    return Phantom(image, label, fan, box, spacing_mm, frame_time_ms)


#: Type 2 (and 2C) attributes of the Ultrasound Multi-frame Image IOD the phantom leaves empty.
_EMPTY_TYPE2 = (
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "AccessionNumber",
    "Laterality",
    "PositionReferenceIndicator",
    "PatientOrientation",
)


def _dicom(phantom: Phantom, seed: int, patient_id: str) -> FileDataset:
    height, width, frames = phantom.image.shape
    uid = lambda part: generate_uid(entropy_srcs=["vivim-phantom", str(seed), patient_id, part])  # noqa: E731
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundMultiFrameImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.FrameOfReferenceUID = uid("frame-of-reference")
    ds.Modality, ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "US", "vivim-monai phantom", 1, 1
    ds.PatientID, ds.PatientName = patient_id, f"Phantom^{patient_id}"
    ds.StudyID, ds.StudyDescription = patient_id[:16], "vivim-monai synthetic phantom"
    # Type 2 attributes a phantom has no value for (no birth date, sex, acquisition date, physician or order): present
    # and empty, as the Patient, General Study/Series/Image and Frame of Reference modules require
    for keyword in _EMPTY_TYPE2:
        setattr(ds, keyword, None)
    ds.ImageType = ["DERIVED", "PRIMARY"]  # synthetic, not acquired (US Image module, Type 2)
    ds.Rows, ds.Columns, ds.NumberOfFrames = height, width, frames
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.FrameTime, ds.CineRate = f"{phantom.frame_time_ms:.3f}", int(round(1000.0 / phantom.frame_time_ms))
    ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
    region = pydicom.Dataset()
    x0, y0, x1, y1 = phantom.fan_box
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
    region.RegionLocationMinX0, region.RegionLocationMinY0 = x0, y0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = x1, y1
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = phantom.spacing_mm / 10.0
    ds.SequenceOfUltrasoundRegions = [region]
    ds.PixelData = np.ascontiguousarray(phantom.image.transpose(2, 0, 1)).tobytes()
    return ds


def write_phantom_case(
    folder: str | os.PathLike, case_id: str = "phantom000", seed: int = 0, **kwargs
) -> dict[str, str]:
    """Write ``<case_id>.dcm`` (Ultrasound Multi-frame) and ``<case_id>_label.nii.gz`` (H, W, T) into ``folder``.

    Returns a datalist entry ``{"image", "label", "case_id"}``; ``kwargs`` go to :func:`make_phantom`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(seed=seed, **kwargs)
    image_path, label_path = folder / f"{case_id}.dcm", folder / f"{case_id}_label.nii.gz"
    dataset = _dicom(phantom, seed, case_id)
    atomic_write(image_path, lambda name: dataset.save_as(name, enforce_file_format=True))
    affine = np.diag([phantom.spacing_mm, phantom.spacing_mm, 1.0, 1.0])
    label_image = nib.Nifti1Image(phantom.label, affine)
    atomic_write(label_path, lambda name: nib.save(label_image, name))
    return {"image": str(image_path), "label": str(label_path), "case_id": case_id}


def make_phantom_data(root: Path, cases: int, frames: int, folds: int, height: int = 192, width: int = 256) -> Path:
    """Phantom training cases with a folded datalist in ``root/data`` and one held-out case of twice the frames in
    ``root/test`` (``heldout.dcm``): the demo's data and the packaged bundle's unit-test data. Returns the datalist."""
    data = Path(root) / "data"
    for index in range(cases):
        write_phantom_case(data, f"phantom{index:03d}", seed=index, num_frames=frames, height=height, width=width)
    write_phantom_case(Path(root) / "test", "heldout", seed=1000, num_frames=frames * 2, height=height, width=width)
    entries = discover_cases(data, "dicom", class_names=OVARIAN_CLASSES)
    fold_of_entry, report = assign_folds(entries, folds)
    entries = [{**entry, "fold": fold} for entry, fold in zip(entries, fold_of_entry)]
    datalist = data / "datalist.json"
    write_datalist(datalist, entries, data, "dicom", OVARIAN_CLASSES, name="phantom", folds=report)
    return datalist

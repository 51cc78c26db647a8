"""A DICOM parent for cines that have none (NIfTI, MHA, NRRD, frame folders): a Multi-frame Secondary Capture image.

A DICOM SEG is derived from source images and references them frame by frame; a cine read from a volume or from
frame images has no DICOM instance to reference, and a SEG without one would need a patient frame of reference that
a cine does not have. So the cine itself is written as the SEG's source, in the IOD the standard gives converted
images (PS3.3 A.8.2, A.8.5): Multi-frame Grayscale Byte SC for one channel, Multi-frame True Color SC (RGB) for three.
The pair opens in any DICOM viewer. The SC holds the frames exactly when they are integers in 0..255, the usual case
for ultrasound; other intensities are stretched linearly to 0..255 (stated in Derivation Description), as the overlay
GIF shows them. Other channel counts keep channel 0.

Patient and study are unknown: the Type 2 attributes are empty except Patient ID, which is the case id (archives
refuse or merge objects without one). UIDs derive from the case id and the pixel data, so rewriting the same cine
gives the same instance. RLE Lossless keeps files small (the black surround of ultrasound frames compresses well).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from monai.utils import convert_to_numpy
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    RLELossless,
    generate_uid,
)

from vivim_monai import __version__
from vivim_monai.utils.atomic import atomic_write

__all__ = ["cine_bytes", "secondary_capture", "write_secondary_capture"]

#: Type 2 attributes (Patient, General Study/Series/Image modules) that are unknown for a cine without DICOM parent.
_EMPTY_TYPE2 = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PatientOrientation",
    "Laterality",  # 2C: the body part, hence whether it is paired, is unknown
)


def cine_bytes(cine: Any) -> tuple[np.ndarray, str]:
    """Frames ``(T, H, W, S)`` uint8 (``S`` 1 or 3 samples) of ``cine`` ``(C, H, W, T)`` and how they were obtained.

    Integers in 0..255 are kept; anything else is stretched linearly from the cine's minimum to its maximum.
    """
    array = convert_to_numpy(cine, wrap_sequence=True)
    if array.ndim != 4 or array.size == 0:
        raise ValueError(f"expected a non-empty cine (C, H, W, T), got shape {array.shape}")
    channels = [0, 1, 2] if array.shape[0] == 3 else [0]
    frames = np.moveaxis(array[channels], (0, -1), (-1, 0))  # (T, H, W, S)
    integer = np.issubdtype(frames.dtype, np.integer) or frames.dtype == bool

    def finite(frame: np.ndarray) -> np.ndarray:
        return frame.astype(np.int64) if integer else np.nan_to_num(frame.astype(np.float64), posinf=0.0, neginf=0.0)

    low, high, whole = np.inf, -np.inf, True
    for frame in frames:  # frame by frame: long cines are never converted to float as a whole
        values = finite(frame)
        low, high = min(low, float(values.min())), max(high, float(values.max()))
        whole = whole and (integer or bool(np.all(values == np.round(values))))
    keep = whole and low >= 0 and high <= 255
    if keep and frames.dtype == np.uint8:
        return np.ascontiguousarray(frames), "intensities kept"
    scale = 255.0 / (high - low) if high > low else 0.0
    result = np.empty(frames.shape, dtype=np.uint8)
    for index, frame in enumerate(frames):
        result[index] = finite(frame) if keep else np.rint((finite(frame) - low) * scale)
    if keep:
        return result, "intensities kept"
    return result, f"intensities stretched linearly from [{low:.6g}, {high:.6g}] to [0, 255]"


def _uid(case_id: str, digest: str, part: str) -> str:
    return generate_uid(entropy_srcs=["vivim-monai secondary capture", case_id, digest, part])


def secondary_capture(
    cine: Any,
    case_id: str,
    spacing_mm: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
) -> FileDataset:
    """The Multi-frame SC dataset of ``cine`` ``(C, H, W, T)`` (see the module notes), RLE Lossless encoded.

    ``spacing_mm`` (row, column) becomes Pixel Spacing; ``frame_time_ms`` the Cine module's Frame Time (frames are
    numbered by a Frame Label Vector when it is unknown).
    """
    frames, derivation = cine_bytes(cine)
    count, rows, columns, samples = frames.shape
    digest = hashlib.sha256(frames.tobytes()).hexdigest()
    colour = samples == 3
    sop_class = (
        MultiFrameTrueColorSecondaryCaptureImageStorage
        if colour
        else MultiFrameGrayscaleByteSecondaryCaptureImageStorage
    )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, _uid(case_id, digest, "instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the case id may be any file name
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(case_id, digest, "study"), _uid(case_id, digest, "series")
    ds.PatientID = case_id[:64]
    for keyword in _EMPTY_TYPE2:
        setattr(ds, keyword, None)
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, 1
    ds.SeriesDescription = f"{case_id} cine"[:64]
    ds.ConversionType = "WSD"  # made on a workstation from a non-DICOM file
    ds.SecondaryCaptureDeviceManufacturer, ds.SecondaryCaptureDeviceSoftwareVersions = "vivim-monai", __version__
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"frames of a non-DICOM cine, {derivation}"
    ds.BurnedInAnnotation = "YES"  # unknown: cines often carry burned-in text, so the safe answer
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, columns, count
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, "RGB" if colour else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if colour:
        ds.PlanarConfiguration = 0
    else:  # the values the Multi-frame Grayscale Byte SC IOD prescribes (PS3.3 A.8.3.4)
        ds.PresentationLUTShape, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "IDENTITY", 0, 1, "US"
    if count > 1 and frame_time_ms:  # Frame Increment Pointer (1C) and the Cine module only for several frames
        ds.FrameTime, ds.FrameIncrementPointer = f"{float(frame_time_ms):.6g}", pydicom.tag.Tag("FrameTime")
    elif count > 1:
        ds.FrameLabelVector = [str(frame + 1) for frame in range(count)]
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameLabelVector")
    if spacing_mm is not None:
        ds.PixelSpacing = [f"{float(spacing_mm[0]):.6g}", f"{float(spacing_mm[1]):.6g}"]
    pixels = frames if colour else frames[..., 0]
    ds.compress(
        RLELossless, pixels if count > 1 else pixels[0], encoding_plugin="pylibjpeg", generate_instance_uid=False
    )
    return ds


def write_secondary_capture(
    cine: Any,
    path: str | os.PathLike,
    case_id: str,
    spacing_mm: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
) -> Path:
    """Write :func:`secondary_capture` of ``cine`` to ``path`` (atomically); returns ``path``."""
    dataset = secondary_capture(cine, case_id, spacing_mm, frame_time_ms)
    return atomic_write(path, lambda name: dataset.save_as(name, enforce_file_format=True))

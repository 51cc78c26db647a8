"""Multi-frame DICOM cine reading into MONAI's clip layout ``(C, H, W, T)``.

pydicom decodes the pixel data (with the pylibjpeg plugins for JPEG / JPEG 2000 / RLE); YBR colour is converted to
RGB by pydicom, PALETTE COLOR goes through its lookup table (16-bit entries scaled to 0..255) and MONOCHROME1 is
inverted so that bright means high signal everywhere. Frames stay in file order along the last axis.
"""

from __future__ import annotations

import os

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from pydicom.pixels import apply_color_lut

__all__ = ["CineReadError", "read_dicom_cine"]


class CineReadError(ValueError):
    """A cine could not be read; the message names the file and the reason."""


def _frame_time_ms(ds: pydicom.Dataset) -> float | None:
    """Frame interval in ms from FrameTime, the mean of FrameTimeVector, or CineRate; None when absent."""
    if "FrameTime" in ds and ds.FrameTime not in (None, ""):
        return float(ds.FrameTime)
    if "FrameTimeVector" in ds and ds.FrameTimeVector:
        vector = np.asarray(ds.FrameTimeVector, dtype=float)[1:]  # the first entry is 0 by definition
        return float(vector.mean()) if vector.size else None
    if "CineRate" in ds and ds.CineRate:
        return 1000.0 / float(ds.CineRate)
    return None


def read_dicom_cine(path: str | os.PathLike) -> MetaTensor:
    """Read a single- or multi-frame DICOM image as a float32 MetaTensor ``(C, H, W, T)`` with DICOM metadata."""
    path = os.fspath(path)
    try:
        ds = pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise CineReadError(f"{path}: not a readable DICOM file ({err})") from err
    if "PixelData" not in ds:
        raise CineReadError(f"{path}: DICOM file has no pixel data")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or undecodable pixel data
        raise CineReadError(f"{path}: cannot decode pixel data ({type(err).__name__}: {err})") from err
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
    samples = pixels.shape[-1] if pixels.ndim == (4 if frames > 1 else 3) else 1
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns), samples)
    array = pixels.astype(np.float32)
    if photometric == "PALETTE COLOR" and pixels.dtype == np.uint16:
        array /= 257.0  # 16-bit lookup-table entries -> the 0..255 range of the other colour cines
    if photometric == "MONOCHROME1":
        array = array.max() - array
    meta = {
        "filename_or_obj": path,
        "frame_time_ms": _frame_time_ms(ds),
        "number_of_frames": frames,
        "photometric_interpretation": photometric,
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "modality": str(ds.get("Modality", "")),
    }
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array.transpose(3, 1, 2, 0))), meta=meta)

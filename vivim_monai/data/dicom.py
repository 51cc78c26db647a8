"""Multi-frame DICOM cine reading into MONAI's clip layout ``(C, H, W, T)``.

pydicom decodes the pixel data (with the pylibjpeg plugins for JPEG / JPEG 2000 / RLE); YBR colour is converted to
RGB by pydicom, PALETTE COLOR goes through its lookup table (16-bit entries scaled to 0..255) and MONOCHROME1 is
inverted so that bright means high signal everywhere. Frames stay in file order along the last axis (no
MONAI ``PydicomReader`` axis swap).

Metadata kept for later steps (fan masking, physical areas, DICOM SEG): frame time (``FrameTime``, the mean of
``FrameTimeVector``, ``CineRate``, else :data:`DEFAULT_FRAME_TIME_MS`, with its source), pixel spacing in mm (from
the first 2-D tissue region of ``SequenceOfUltrasoundRegions``, else ``PixelSpacing`` / ``ImagerPixelSpacing``; the
key is absent when unknown, since MONAI cannot collate None), the ultrasound regions themselves, and the study /
series / SOP instance UIDs.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import pydicom
import torch
from monai.data import ImageReader, MetaTensor
from monai.utils import MetaKeys, SpaceKeys
from pydicom.pixels import apply_color_lut
from pydicom.uid import MPEGTransferSyntaxes

__all__ = [
    "DEFAULT_FRAME_TIME_MS",
    "CineReadError",
    "DicomCineReader",
    "dicom_cine_array",
    "has_dicom_preamble",
    "read_dicom_cine",
]

#: Frame interval used when a file states none (30 frames/s, the common cine rate); recorded as "default".
DEFAULT_FRAME_TIME_MS = 1000.0 / 30.0
_CM_UNITS = 3  # PhysicalUnitsX/YDirection code for cm
_REGION_FIELDS = {
    "RegionSpatialFormat": "spatial_format",
    "RegionDataType": "data_type",
    "RegionLocationMinX0": "x0",
    "RegionLocationMinY0": "y0",
    "RegionLocationMaxX1": "x1",
    "RegionLocationMaxY1": "y1",
    "PhysicalDeltaX": "dx",
    "PhysicalDeltaY": "dy",
    "PhysicalUnitsXDirection": "units_x",
    "PhysicalUnitsYDirection": "units_y",
}


class CineReadError(ValueError):
    """A cine could not be read; the message names the file and the reason."""


def _frame_time_ms(ds: pydicom.Dataset) -> tuple[float, str]:
    """Frame interval in ms and where it came from."""
    if ds.get("FrameTime") not in (None, ""):
        return float(ds.FrameTime), "FrameTime"
    if ds.get("FrameTimeVector"):
        vector = np.asarray(ds.FrameTimeVector, dtype=float)[1:]  # the first entry is 0 by definition
        if vector.size and np.all(vector > 0):
            return float(vector.mean()), "FrameTimeVector"
    if ds.get("CineRate"):
        return 1000.0 / float(ds.CineRate), "CineRate"
    return DEFAULT_FRAME_TIME_MS, "default"


def _regions(ds: pydicom.Dataset) -> list[dict[str, Any]]:
    regions = []
    for item in ds.get("SequenceOfUltrasoundRegions", []) or []:
        regions.append({name: item.get(tag) for tag, name in _REGION_FIELDS.items() if item.get(tag) is not None})
    return regions


def _pixel_spacing_mm(ds: pydicom.Dataset, regions: list[dict[str, Any]]) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and its source; the first 2-D region measured in cm wins."""
    for region in regions:
        if region.get("spatial_format") == 1 and region.get("units_x") == region.get("units_y") == _CM_UNITS:
            return (abs(float(region["dy"])) * 10.0, abs(float(region["dx"])) * 10.0), "SequenceOfUltrasoundRegions"
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        if ds.get(tag):
            return (float(ds[tag].value[0]), float(ds[tag].value[1])), tag
    return None, "unknown"


def dicom_cine_array(ds: pydicom.Dataset, path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``ds`` to an array ``(C, H, W, T)`` in the stored dtype, and its metadata; ``path`` names the file.

    The array is a channel-first *view* of pydicom's frame-major buffer (no copy), so reading costs what decoding
    costs; cast when needed (``LoadCined`` and MONAI's ``LoadImage`` cast to float32).
    """
    if "PixelData" not in ds:
        raise CineReadError(f"{path}: DICOM file has no pixel data (PixelData element missing); not an image?")
    stated = ds.get("NumberOfFrames")
    frames = int(stated) if stated not in (None, "") else 1
    if frames < 1 or not ds.get("PixelData"):
        raise CineReadError(
            f"{path}: NumberOfFrames is {stated} with {len(ds.PixelData or b'')} bytes of pixel data; "
            f"a cine needs at least one frame"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax in MPEGTransferSyntaxes:
        raise CineReadError(
            f"{path}: encapsulated video ({syntax.name}) has no pydicom decoder; decode the stream to a frame folder "
            f"(e.g. ffmpeg) or re-export the cine with JPEG or uncompressed frames"
        )
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or undecodable pixel data
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise CineReadError(
            f"{path}: cannot decode pixel data ({name}): {type(err).__name__}: {err}. Compressed syntaxes need the "
            f"pylibjpeg / pyjpegls decoders of requirements.txt; a truncated or corrupt file must be re-exported"
        ) from err
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, ds)
        if pixels.dtype == np.uint16:  # 16-bit lookup-table entries -> their high byte, the 0..255 of other cines
            pixels = (pixels >> 8).astype(np.uint8)
    samples = pixels.shape[-1] if pixels.ndim == (4 if frames > 1 else 3) else 1
    try:
        pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns), samples)
    except ValueError as err:
        raise CineReadError(
            f"{path}: decoded pixels {pixels.shape} do not match NumberOfFrames={frames}, Rows={ds.get('Rows')}, "
            f"Columns={ds.get('Columns')}"
        ) from err
    if photometric == "MONOCHROME1":  # bright = high signal, as in every other photometric interpretation
        pixels = pixels.max() - pixels
    array = pixels.transpose(3, 1, 2, 0)
    frame_time, frame_time_source = _frame_time_ms(ds)
    regions = _regions(ds)
    spacing, spacing_source = _pixel_spacing_mm(ds, regions)
    meta = {
        "filename_or_obj": path,
        "frame_time_ms": frame_time,
        "frame_time_source": frame_time_source,
        "pixel_spacing_source": spacing_source,
        "ultrasound_regions": regions,
        "number_of_frames": frames,
        "photometric_interpretation": photometric,
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "modality": str(ds.get("Modality", "")),
    }
    if spacing is not None:  # left out when unknown: MONAI's collate cannot batch None
        meta["pixel_spacing_mm"] = spacing
    row_mm, col_mm = spacing or (1.0, 1.0)
    meta[MetaKeys.AFFINE] = np.diag([row_mm, col_mm, 1.0, 1.0])
    meta[MetaKeys.ORIGINAL_AFFINE] = meta[MetaKeys.AFFINE].copy()
    meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(array.shape[1:])
    meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = 0
    meta[MetaKeys.SPACE] = SpaceKeys.RAS
    return array, meta


def _read_dataset(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except (OSError, pydicom.errors.InvalidDicomError) as err:
        raise CineReadError(f"{path}: not a readable DICOM file ({err})") from err
    except Exception as err:  # truncated or corrupt headers surface as assorted errors inside pydicom
        raise CineReadError(f"{path}: corrupt DICOM header ({type(err).__name__}: {err})") from err


def read_dicom_cine(path: str | os.PathLike, dtype: torch.dtype | None = None) -> MetaTensor:
    """Read a single- or multi-frame DICOM image as a MetaTensor ``(C, H, W, T)`` with DICOM metadata.

    ``dtype`` None keeps the stored dtype (uint8 for most cines) without copying; e.g. ``torch.float32`` casts.
    """
    path = os.fspath(path)
    array, meta = dicom_cine_array(_read_dataset(path), path)
    affine = torch.as_tensor(meta.pop(MetaKeys.AFFINE))
    tensor = torch.from_numpy(array)
    return MetaTensor(tensor if dtype is None else tensor.to(dtype), affine=affine, meta=meta)


class DicomCineReader(ImageReader):
    """MONAI ``ImageReader`` for DICOM cines: ``LoadImaged(keys="image", reader=DicomCineReader())`` gives
    ``(C, H, W, T)`` MetaTensors (channel first, frames last) with the metadata of :func:`dicom_cine_array`."""

    def verify_suffix(self, filename: Sequence[os.PathLike | str] | os.PathLike | str) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return all(os.fspath(name).lower().endswith((".dcm", ".dicom")) or has_dicom_preamble(name) for name in names)

    def read(self, data: Sequence[os.PathLike | str] | os.PathLike | str, **kwargs: Any) -> Any:
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        if len(names) != 1:
            raise CineReadError(f"DicomCineReader reads one cine file at a time, got {len(names)}: {names[:3]}")
        path = os.fspath(names[0])
        return path, _read_dataset(path)

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        path, ds = img
        return dicom_cine_array(ds, path)


def has_dicom_preamble(path: os.PathLike | str) -> bool:
    """Whether the file starts with the 128-byte preamble and the ``DICM`` magic of DICOM Part 10."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:132] == b"DICM"
    except OSError:
        return False

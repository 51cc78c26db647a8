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
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import numpy as np
import pydicom
import torch
from monai.data import ImageReader, MetaTensor
from monai.utils import MetaKeys, SpaceKeys

try:  # pydicom 3
    from pydicom.encaps import parse_basic_offsets, parse_fragments
    from pydicom.pixels import apply_color_lut
except ImportError:  # pydicom 2.4, e.g. next to MONAI Label 0.8.5 (which needs pydicom<3)
    from pydicom.encaps import get_frame_offsets, get_nr_fragments
    from pydicom.filebase import DicomBytesIO
    from pydicom.pixel_data_handlers.util import apply_color_lut, convert_color_space

    parse_basic_offsets = parse_fragments = None

__all__ = [
    "DEFAULT_FRAME_TIME_MS",
    "MAX_DECODED_BYTES",
    "CineReadError",
    "DicomCineReader",
    "dicom_cine_array",
    "has_dicom_preamble",
    "read_dicom_cine",
]

#: Frame interval used when a file states none (30 frames/s, the common cine rate); recorded as "default".
DEFAULT_FRAME_TIME_MS = 1000.0 / 30.0
#: Largest decoded cine accepted (stored samples): a header claiming more is taken as corrupt rather than allocated.
MAX_DECODED_BYTES = 4 << 30
_PHOTOMETRIC = {
    1: {"MONOCHROME1", "MONOCHROME2", "PALETTE COLOR"},
    3: {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "YBR_PARTIAL_422"},
}
_CM_UNITS = 3  # PhysicalUnitsX/YDirection code for cm
#: Encapsulated video transfer syntaxes (MPEG-2, MPEG-4 AVC/H.264, HEVC/H.265, with their fragmentable variants): the
#: members of pydicom 3's ``MPEGTransferSyntaxes``, listed here because pydicom 2.4's set lacks the ``.1`` variants.
_MPEG_TRANSFER_SYNTAXES = frozenset(
    [f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)] + [f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)]
)
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


def _number(value: Any) -> float | None:
    """``value`` as a positive finite float, else None (malformed optional metadata is ignored, not trusted)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


def _optional(item: pydicom.Dataset, keyword: str) -> Any:
    """``item.keyword`` or None, also when the element cannot be decoded (e.g. a float of the wrong length)."""
    try:
        return item.get(keyword)
    except Exception:  # pydicom raises assorted types for undecodable raw elements
        return None


def _frame_time_ms(ds: pydicom.Dataset) -> tuple[float, str]:
    """Frame interval in ms and where it came from; unusable values fall through to the next source."""
    frame_time = _number(_optional(ds, "FrameTime"))
    if frame_time is not None:
        return frame_time, "FrameTime"
    vector = _optional(ds, "FrameTimeVector")
    if isinstance(vector, Sequence) and len(vector) > 1:
        steps = [_number(step) for step in vector[1:]]  # the first entry is 0 by definition
        if all(step is not None for step in steps):
            return float(np.mean(steps)), "FrameTimeVector"
    rate = _number(_optional(ds, "CineRate"))
    if rate is not None:
        return 1000.0 / rate, "CineRate"
    return DEFAULT_FRAME_TIME_MS, "default"


def _regions(ds: pydicom.Dataset) -> list[dict[str, Any]]:
    """The ultrasound regions with their finite numeric fields (undecodable or non-finite ones left out)."""
    regions = []
    for item in _optional(ds, "SequenceOfUltrasoundRegions") or []:
        fields = {name: _optional(item, tag) for tag, name in _REGION_FIELDS.items()}
        regions.append({name: v for name, v in fields.items() if isinstance(v, (int, float)) and np.isfinite(v)})
    return regions


def _pixel_spacing_mm(ds: pydicom.Dataset, regions: list[dict[str, Any]]) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and its source; the first 2-D region measured in cm wins."""
    for region in regions:
        if region.get("spatial_format") == 1 and region.get("units_x") == region.get("units_y") == _CM_UNITS:
            dy, dx = _number(abs(region.get("dy", 0))), _number(abs(region.get("dx", 0)))
            if dy is not None and dx is not None:
                return (dy * 10.0, dx * 10.0), "SequenceOfUltrasoundRegions"
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = _optional(ds, tag)
        spacing = [_number(v) for v in value] if isinstance(value, Sequence) and len(value) == 2 else [None]
        if None not in spacing:
            return (spacing[0], spacing[1]), tag
    return None, "unknown"


def _integer(ds: pydicom.Dataset, keyword: str, path: str, default: int | None = None) -> int:
    """``ds.keyword`` as an int; a missing (without ``default``) or malformed element raises CineReadError."""
    try:
        value = ds.get(keyword)
        if value in (None, "") and default is not None:
            return default
        return int(value)
    except Exception as err:  # missing, non-numeric, or undecodable raw bytes
        shown = f"{ds.get_item(keyword).value!r}" if keyword in ds else "missing"
        raise CineReadError(f"{path}: {keyword} is {shown}, not an integer; the image header is corrupt") from err


def _check_image_module(ds: pydicom.Dataset, path: str, frames: int) -> None:
    """Validate the image pixel tags the decoder relies on, and bound the decoded size before decoding."""
    rows, columns = _integer(ds, "Rows", path), _integer(ds, "Columns", path)
    samples, bits = _integer(ds, "SamplesPerPixel", path, 1), _integer(ds, "BitsAllocated", path)
    if rows < 1 or columns < 1:
        raise CineReadError(f"{path}: zero-size frames (Rows={rows}, Columns={columns})")
    photometric = str(_optional(ds, "PhotometricInterpretation") or "").strip().upper()
    allowed = _PHOTOMETRIC.get(samples)
    if allowed is None:
        raise CineReadError(f"{path}: SamplesPerPixel={samples}; a cine has 1 (grey or palette) or 3 (colour)")
    if photometric not in allowed:
        raise CineReadError(
            f"{path}: PhotometricInterpretation {photometric or 'missing'!r} does not fit SamplesPerPixel={samples} "
            f"(expected one of {sorted(allowed)})"
        )
    if bits not in (1, 8, 16, 32, 64):
        raise CineReadError(f"{path}: BitsAllocated={bits}; expected 1, 8, 16, 32 or 64")
    size = frames * rows * columns * samples * bits // 8
    if size > MAX_DECODED_BYTES:
        raise CineReadError(
            f"{path}: {frames} frames of {rows}x{columns}x{samples} at {bits} bits would decode to "
            f"{size / 2**30:.1f} GiB, over MAX_DECODED_BYTES ({MAX_DECODED_BYTES / 2**30:.0f} GiB); "
            f"NumberOfFrames, Rows or Columns is probably wrong"
        )


def _check_native_frames(ds: pydicom.Dataset, path: str, frames: int) -> None:
    """Native pixel data must not hold whole frames beyond ``NumberOfFrames``: pydicom 2.4 drops them as padding
    (a 6-frame cine with an empty ``NumberOfFrames`` decodes as its first frame), pydicom 3 returns them."""
    rows, columns, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    samples = _integer(ds, "SamplesPerPixel", path, 1)
    frame_bits = rows * columns * samples * bits
    if str(_optional(ds, "PhotometricInterpretation") or "").strip().upper() == "YBR_FULL_422":
        frame_bits = frame_bits * 2 // 3  # two chroma samples shared by each pair of pixels
    data_bits = len(ds.PixelData) * 8
    held = data_bits // frame_bits
    if held > frames and data_bits - frames * frame_bits > 8:  # one trailing byte may pad to an even length
        raise CineReadError(
            f"{path}: NumberOfFrames={frames} but the pixel data ({len(ds.PixelData)} bytes) holds {held} frames of "
            f"{rows}x{columns}x{samples} at {bits} bits; NumberOfFrames is wrong or missing"
        )


def _count_fragments(data: bytes, path: str) -> int:
    """Number of fragments of encapsulated pixel data (each frame has at least one)."""
    try:
        if parse_fragments is None:  # pydicom 2.4
            buffer = DicomBytesIO(data)
            buffer.is_little_endian = True
            get_frame_offsets(buffer)
            return get_nr_fragments(buffer)
        buffer = BytesIO(data)
        parse_basic_offsets(buffer)
        return parse_fragments(buffer)[0]
    except Exception as err:  # not encapsulated at all, or broken item headers
        raise CineReadError(f"{path}: malformed encapsulated pixel data ({type(err).__name__}: {err})") from err


def _is_transfer_syntax(syntax: pydicom.uid.UID) -> bool:
    """``syntax.is_transfer_syntax``; pydicom 2.4 raises ValueError for private UIDs, which pydicom 3 calls False."""
    try:
        return syntax.is_transfer_syntax
    except ValueError:
        return False


def dicom_cine_array(ds: pydicom.Dataset, path: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode ``ds`` to an array ``(C, H, W, T)`` in the stored dtype, and its metadata; ``path`` names the file.

    The array is a channel-first *view* of pydicom's frame-major buffer (no copy), so reading costs what decoding
    costs; cast when needed (``LoadCined`` and MONAI's ``LoadImage`` cast to float32). The image tags are checked
    before decoding, so a corrupt header raises :class:`CineReadError` instead of a huge allocation or garbage.
    """
    if "PixelData" not in ds:
        raise CineReadError(f"{path}: DICOM file has no pixel data (no PixelData element): truncated or not an image")
    frames = _integer(ds, "NumberOfFrames", path, default=1)
    if frames < 1 or not ds.get("PixelData"):
        raise CineReadError(
            f"{path}: NumberOfFrames is {frames} with {len(ds.PixelData or b'')} bytes of pixel data; "
            f"a cine needs at least one frame"
        )
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if syntax is not None and not _is_transfer_syntax(syntax):
        raise CineReadError(f"{path}: {syntax!r} is not a known transfer syntax UID; the file meta is corrupt")
    if syntax in _MPEG_TRANSFER_SYNTAXES:
        raise CineReadError(
            f"{path}: encapsulated video ({syntax.name}) has no pydicom decoder; decode the stream to a frame folder "
            f"(e.g. ffmpeg) or re-export the cine with JPEG or uncompressed frames"
        )
    _check_image_module(ds, path, frames)
    if syntax is not None and syntax.is_encapsulated:
        fragments = _count_fragments(ds.PixelData, path)
        if fragments < frames:
            raise CineReadError(
                f"{path}: NumberOfFrames={frames} but the encapsulated pixel data holds fewer fragments; "
                f"NumberOfFrames is wrong or the file is truncated"
            )
        if fragments > 1 and _optional(ds, "NumberOfFrames") in (None, ""):  # pydicom 2.4 would decode one frame
            raise CineReadError(
                f"{path}: NumberOfFrames is missing or empty but the encapsulated pixel data holds {fragments} "
                f"fragments; a multi-frame cine needs its frame count"
            )
    else:
        _check_native_frames(ds, path, frames)
    try:
        pixels = ds.pixel_array
    except Exception as err:  # pydicom raises many types for broken or undecodable pixel data
        name = getattr(syntax, "name", "unknown transfer syntax")
        raise CineReadError(
            f"{path}: cannot decode pixel data ({name}): {type(err).__name__}: {err}. Compressed syntaxes need the "
            f"pylibjpeg / pyjpegls decoders of requirements.txt; a truncated or corrupt file must be re-exported"
        ) from err
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if parse_fragments is None and photometric in ("YBR_FULL", "YBR_FULL_422"):
        # pydicom 2.4 returns YBR_FULL(_422) pixels in YCbCr, native, RLE and JPEG alike (a handler that converts
        # also sets the attribute to RGB); pydicom 3 returns RGB. JPEG decoded in YCbCr then converted here can
        # differ from pydicom 3's by a grey level or two.
        pixels = convert_color_space(pixels, photometric, "RGB")
    if photometric == "PALETTE COLOR":
        try:
            pixels = apply_color_lut(pixels, ds)
        except Exception as err:  # missing or inconsistent lookup-table tags
            raise CineReadError(f"{path}: PALETTE COLOR without a usable lookup table ({err})") from err
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
        "sop_class_uid": str(_optional(ds, "SOPClassUID") or ""),
        "sop_instance_uid": str(_optional(ds, "SOPInstanceUID") or ""),
        "study_instance_uid": str(_optional(ds, "StudyInstanceUID") or ""),
        "series_instance_uid": str(_optional(ds, "SeriesInstanceUID") or ""),
        "frame_of_reference_uid": str(_optional(ds, "FrameOfReferenceUID") or ""),
        "modality": str(_optional(ds, "Modality") or ""),
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


def _part10_problem(path: str) -> str | None:
    """Why ``path`` is not a DICOM Part 10 file (empty, too short, no ``DICM`` marker); None when it looks like one."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return None
    if size == 0:
        return "empty file, 0 bytes"
    if size < 132:
        return f"{size} bytes, shorter than the 128-byte preamble and 'DICM' marker that start a DICOM file"
    if head[128:132] != b"DICM":
        return "no 'DICM' marker after the 128-byte preamble: not a DICOM file, or not a Part 10 one"
    return None


def _read_dataset(path: str) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as err:
        raise CineReadError(f"{path}: not a readable DICOM file ({_part10_problem(path) or err})") from err
    except OSError as err:
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

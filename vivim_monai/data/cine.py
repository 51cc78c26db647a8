"""``load_cine``: one entry point for medical videos as MetaTensors ``(C, H, W, T)``.

Accepted inputs:

* DICOM files (single- or multi-frame; see :mod:`vivim_monai.data.dicom`);
* 2-D+t volumes readable by SimpleITK (NIfTI, MHA/MHD, NRRD): index axes (i, j, k) are (rows, columns, frames), as
  MONAI's readers load them, and vector pixels become channels;
* folders of frame images (PNG, JPEG, BMP, TIFF), ordered by the numbers in their names ("slice_999" before
  "slice_1069", not lexicographically), optionally filtered by a glob ``pattern``;
* an explicit sequence of frame image files, kept in the given order (a datalist states the order).

Arrays keep their stored dtype unless ``dtype`` is given (the DICOM path then copies nothing).

Unreadable input raises :class:`CineReadError` (a ``ValueError``) naming the file and the problem.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor
from PIL import Image, UnidentifiedImageError

from vivim_monai.data.dicom import (
    DEFAULT_FRAME_TIME_MS,
    MAX_DECODED_BYTES,
    CineReadError,
    has_dicom_preamble,
    read_dicom_cine,
)

__all__ = ["FRAME_SUFFIXES", "VOLUME_SUFFIXES", "frame_files", "load_cine", "natural_key", "read_frame_image"]

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def natural_key(name: str) -> list[Any]:
    """Sort key that compares the digit runs of ``name`` as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _base_meta(path: str) -> dict[str, Any]:
    return {
        "filename_or_obj": path,
        "frame_time_ms": DEFAULT_FRAME_TIME_MS,
        "frame_time_source": "default",
        "pixel_spacing_source": "unknown",
    }


def _sitk_reason(err: RuntimeError) -> str:
    """The ITK message without SimpleITK's source-location line."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith("Exception thrown in SimpleITK")) or str(err)


def _check_nifti(path: str) -> None:
    """NIfTI checks ITK cannot make: it reads a zero-length axis as length 1 and NaN/Inf voxels as 0."""
    try:
        image = nib.load(path)
        scaled = image.dataobj.slope != 1 or image.dataobj.inter != 0
        finite = not (np.issubdtype(image.get_data_dtype(), np.floating) or scaled) or np.isfinite(image.dataobj).all()
    except Exception as err:  # nibabel raises assorted types for corrupt or truncated files
        raise CineReadError(f"{path}: cannot read NIfTI ({type(err).__name__}: {err})") from err
    if 0 in image.shape:
        raise CineReadError(f"{path}: volume of shape {image.shape} has an empty axis")
    if not finite:
        raise CineReadError(f"{path}: volume contains NaN or infinite values")


def _load_volume(path: str) -> MetaTensor:
    import SimpleITK as sitk  # here, not at module level: 50 MB that only volume files need (DICOM and frames do not)

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
        size = tuple(reader.GetSize())
        bits = re.search(r"(\d+)-bit", sitk.GetPixelIDValueAsString(reader.GetPixelID()))
        nbytes = int(np.prod(size)) * reader.GetNumberOfComponents() * (int(bits.group(1)) // 8 if bits else 8)
        if 0 in size or nbytes > MAX_DECODED_BYTES:
            raise CineReadError(
                f"{path}: volume header states size {size} x {reader.GetNumberOfComponents()} components "
                f"({nbytes / 2**30:.1f} GiB); an empty axis or over MAX_DECODED_BYTES means a corrupt header"
            )
        if reader.GetDimension() not in (2, 3):
            raise CineReadError(f"{path}: expected a 2-D+t volume (3 index axes), found {reader.GetDimension()} axes")
        if path.lower().endswith((".nii", ".nii.gz")):
            _check_nifti(path)
        image = reader.Execute()
    except RuntimeError as err:
        reason = _sitk_reason(err)
        raise CineReadError(f"{path}: cannot read volume ({reason}); corrupt, truncated or not a volume") from err
    array = sitk.GetArrayFromImage(image)  # (k, j, i[, C])
    channels = image.GetNumberOfComponentsPerPixel()
    if channels == 1:
        array = array[..., None]
    if image.GetDimension() == 2:
        array = array[None]  # one frame
    array = np.moveaxis(array, -1, 0).transpose(0, 3, 2, 1)  # (C, i, j, k)
    if not np.isfinite(array).all():
        raise CineReadError(f"{path}: volume contains NaN or infinite values")
    spacing = image.GetSpacing()
    meta = _base_meta(path)
    meta["pixel_spacing_mm"] = (float(spacing[0]), float(spacing[1]))
    meta["pixel_spacing_source"] = "volume header"
    if image.GetDimension() == 3 and spacing[2] != 1.0:
        meta["frame_time_ms"], meta["frame_time_source"] = float(spacing[2]), "volume header (third spacing)"
    affine = torch.diag(torch.tensor([spacing[0], spacing[1], 1.0, 1.0], dtype=torch.float64))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=affine, meta=meta)


def read_frame_image(path: Path) -> np.ndarray:
    """One frame image as (H, W, C) in its stored dtype; palette/alpha/CMYK images become RGB (LA: grey)."""
    try:
        with Image.open(path) as frame:
            if frame.mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr"):
                frame = frame.convert("RGB" if frame.mode != "LA" else "L")
            array = np.asarray(frame)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise CineReadError(f"{path}: unreadable frame image ({err})") from err
    return array[..., None] if array.ndim == 2 else array


def _load_frame_files(files: Sequence[Path], name: str) -> MetaTensor:
    """Stack same-sized frame images, in the given order, into ``(C, H, W, T)``; ``name`` is the cine's name."""
    frames = [read_frame_image(files[0])]
    for path in files[1:]:
        frame = read_frame_image(path)
        if frame.shape != frames[0].shape or frame.dtype != frames[0].dtype:  # e.g. a 16-bit frame among 8-bit
            raise CineReadError(
                f"{path}: frame of shape {frame.shape} {frame.dtype} differs from the first frame {files[0].name} "
                f"{frames[0].shape} {frames[0].dtype}"
            )
        frames.append(frame)
    array = np.stack(frames, axis=-1).transpose(2, 0, 1, 3)  # (C, H, W, T)
    meta = _base_meta(name)
    meta["frame_files"] = [str(p) for p in files]
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), meta=meta)


def frame_files(folder: Path, pattern: str = "*") -> list[Path]:
    """Frame images of ``folder`` matching ``pattern``, in natural order of their names."""
    return sorted(
        (p for p in folder.glob(pattern) if p.is_file() and p.name.lower().endswith(FRAME_SUFFIXES)),
        key=lambda p: natural_key(p.name),
    )


def _load_frame_folder(folder: Path, pattern: str) -> MetaTensor:
    files = frame_files(folder, pattern)
    if not files:
        raise CineReadError(f"{folder}: no frame images matching {pattern!r} with suffixes {FRAME_SUFFIXES}")
    return _load_frame_files(files, str(folder))


def load_cine(
    path: str | os.PathLike | Sequence[str | os.PathLike], pattern: str = "*", dtype: torch.dtype | None = None
) -> MetaTensor:
    """Load a DICOM cine, a 2-D+t volume, a folder of frames or a list of frame files as a MetaTensor ``(C, H, W, T)``.

    Args:
        path: file, folder, or a sequence of frame image files (kept in the given order).
        pattern: glob selecting the frame images inside a folder (e.g. ``"*[0-9].png"``); ignored for files.
        dtype: None keeps the stored dtype; e.g. ``torch.float32`` casts.
    """
    if isinstance(path, (str, os.PathLike)):
        cine = _load_path(Path(path), pattern)
    else:
        files = [Path(p) for p in path]
        if not files:
            raise CineReadError("empty list of frame files: a cine needs at least one frame")
        missing = [str(p) for p in files if not p.is_file()]
        if missing:
            raise CineReadError(f"{missing[0]}: no such frame file ({len(missing)} of {len(files)} missing)")
        cine = _load_frame_files(files, str(files[0].parent))
    return cine if dtype is None else cine.to(dtype)


def _load_path(path: Path, pattern: str) -> MetaTensor:
    if path.is_dir():
        return _load_frame_folder(path, pattern)
    if not path.is_file():
        raise CineReadError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise CineReadError(f"{path}: empty file (0 bytes)")
    name = path.name.lower()
    if name.endswith((".dcm", ".dicom")) or has_dicom_preamble(path):
        return read_dicom_cine(path)
    if name.endswith(VOLUME_SUFFIXES):
        return _load_volume(str(path))
    if name.endswith(FRAME_SUFFIXES):
        return _load_frame_folder(path.parent, path.name)
    raise CineReadError(
        f"{path}: unsupported file type; expected DICOM, one of {VOLUME_SUFFIXES} or a folder of {FRAME_SUFFIXES}"
    )

"""NIfTI label volumes of a cine, laid out as :func:`vivim_monai.data.load_cine` reads volumes back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np

from vivim_monai.io._labels import as_label_volume
from vivim_monai.utils.atomic import atomic_write

__all__ = ["write_nifti_labels"]


def write_nifti_labels(
    labels: Any,
    path: str | os.PathLike,
    spacing_mm: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
) -> Path:
    """Write ``labels`` ``(H, W, T)`` (or ``(1, H, W, T)``) as a NIfTI volume; returns ``path``.

    Index axes ``(i, j, k)`` are (rows, columns, frames), the layout :func:`load_cine` and MONAI's readers use.
    The voxel sizes are the (row, column) pixel spacing in mm (1 when unknown) and, along ``k``, the frame time in
    ms when given (1 otherwise), which is where :func:`load_cine` looks for it. Stored as uint8 (uint16 for more
    than 256 classes). Written atomically; the folder is created if needed.
    """
    array = as_label_volume(labels)
    dtype = np.uint8 if array.max(initial=0) <= np.iinfo(np.uint8).max else np.uint16
    rows_mm, cols_mm = (float(spacing_mm[0]), float(spacing_mm[1])) if spacing_mm is not None else (1.0, 1.0)
    frame_step = float(frame_time_ms) if frame_time_ms else 1.0
    image = nib.Nifti1Image(np.ascontiguousarray(array, dtype=dtype), np.diag([rows_mm, cols_mm, frame_step, 1.0]))
    image.header.set_xyzt_units(xyz="mm")
    image.header["descrip"] = b"vivim-monai labels (rows, cols, frames)"
    return atomic_write(path, lambda name: nib.save(image, name))

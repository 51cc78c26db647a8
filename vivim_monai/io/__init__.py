"""Output writers for predicted cines; every file is written atomically (see :func:`atomic_write`).

The DICOM writers (and the per-case writer that uses them) load on first use: highdicom costs ~0.4 s to import and
``vivim_monai.data`` imports this package for ``atomic_write``.
"""

from importlib import import_module
from typing import Any

from vivim_monai.io.atomic import atomic_write, atomic_write_csv
from vivim_monai.io.frame_table import area_curves, frame_areas, write_area_plot, write_frame_csv
from vivim_monai.io.nifti import write_nifti_labels
from vivim_monai.io.overlay import DEFAULT_CLASS_COLOURS, overlay_frames, write_overlay_gif

__all__ = [
    "atomic_write",
    "atomic_write_csv",
    "COMPANION_FILES",
    "OUTPUT_KINDS",
    "CaseOutputs",
    "CineOutputWriter",
    "case_id_for",
    "write_case_outputs",
    "DEFAULT_CLASS_NAMES",
    "SEG_PATIENT_STUDY_ATTRIBUTES",
    "read_dicom_seg_labels",
    "write_dicom_seg",
    "write_secondary_capture",
    "area_curves",
    "frame_areas",
    "write_area_plot",
    "write_frame_csv",
    "write_nifti_labels",
    "DEFAULT_CLASS_COLOURS",
    "overlay_frames",
    "write_overlay_gif",
]

_LAZY = {
    "COMPANION_FILES": "case",
    "OUTPUT_KINDS": "case",
    "CaseOutputs": "case",
    "CineOutputWriter": "case",
    "case_id_for": "case",
    "write_case_outputs": "case",
    "DEFAULT_CLASS_NAMES": "dicom_seg",
    "read_dicom_seg_labels": "dicom_seg",
    "write_dicom_seg": "dicom_seg",
    "SEG_PATIENT_STUDY_ATTRIBUTES": "dicom_seg",
    "write_secondary_capture": "secondary_capture",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(f"vivim_monai.io.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'vivim_monai.io' has no attribute {name!r}")

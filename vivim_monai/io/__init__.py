"""Output writers for predicted cines; every file is written atomically (see :func:`atomic_write`)."""

from vivim_monai.io.atomic import atomic_write, atomic_write_csv
from vivim_monai.io.case import OUTPUT_KINDS, CaseOutputs, CineOutputWriter, case_id_for, write_case_outputs
from vivim_monai.io.dicom_seg import DEFAULT_CLASS_NAMES, read_dicom_seg_labels, write_dicom_seg
from vivim_monai.io.frame_table import frame_areas, write_frame_csv
from vivim_monai.io.nifti import write_nifti_labels
from vivim_monai.io.overlay import DEFAULT_CLASS_COLOURS, overlay_frames, write_overlay_gif

__all__ = [
    "atomic_write",
    "atomic_write_csv",
    "OUTPUT_KINDS",
    "CaseOutputs",
    "CineOutputWriter",
    "case_id_for",
    "write_case_outputs",
    "DEFAULT_CLASS_NAMES",
    "read_dicom_seg_labels",
    "write_dicom_seg",
    "frame_areas",
    "write_frame_csv",
    "write_nifti_labels",
    "DEFAULT_CLASS_COLOURS",
    "overlay_frames",
    "write_overlay_gif",
]

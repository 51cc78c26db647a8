"""Output writers for predicted cines; every file is written atomically (see :func:`vivim_monai.utils.atomic_write`)."""

from vivim_monai.io.case import (
    COMPANION_FILES,
    OUTPUT_KINDS,
    CaseOutputs,
    case_id_for,
    write_case_outputs,
)
from vivim_monai.io.confusion_plot import write_confusion_png
from vivim_monai.io.dicom_seg import (
    SEG_PATIENT_STUDY_ATTRIBUTES,
    read_dicom_seg_labels,
    write_dicom_seg,
)
from vivim_monai.io.frame_table import area_curves, frame_areas, write_area_plot, write_frame_csv
from vivim_monai.io.nifti import write_nifti_labels
from vivim_monai.io.overlay import DEFAULT_CLASS_COLOURS, overlay_frames, write_overlay_gif
from vivim_monai.io.secondary_capture import write_secondary_capture

__all__ = [
    "COMPANION_FILES",
    "OUTPUT_KINDS",
    "CaseOutputs",
    "case_id_for",
    "write_case_outputs",
    "SEG_PATIENT_STUDY_ATTRIBUTES",
    "read_dicom_seg_labels",
    "write_dicom_seg",
    "write_secondary_capture",
    "write_confusion_png",
    "area_curves",
    "frame_areas",
    "write_area_plot",
    "write_frame_csv",
    "write_nifti_labels",
    "DEFAULT_CLASS_COLOURS",
    "overlay_frames",
    "write_overlay_gif",
]

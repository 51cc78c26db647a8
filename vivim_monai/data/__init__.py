"""Data readers for medical video (cine) segmentation: DICOM cines, 2-D+t volumes and frame folders."""

from vivim_monai.data.cine import FRAME_SUFFIXES, VOLUME_SUFFIXES, frame_files, load_cine, natural_key, read_frame_image
from vivim_monai.data.clips import CLIP_MODES, ClipDataset, ClipSampler, select_frames
from vivim_monai.data.datalist import (
    LAYOUT_CLASSES,
    LAYOUTS,
    datalist_folds,
    discover_cases,
    load_datalist,
    write_datalist,
)
from vivim_monai.data.dicom import (
    DEFAULT_FRAME_TIME_MS,
    CineReadError,
    DicomCineReader,
    dicom_cine_array,
    has_dicom_preamble,
    read_dicom_cine,
)
from vivim_monai.data.folds import assign_folds, assign_temporal_blocks, temporal_block_report
from vivim_monai.data.labels import (
    LABEL_FORMATS,
    OVARIAN_CLASS_FILES,
    OVARIAN_CLASSES,
    class_masks_to_index,
    load_label_cine,
)
from vivim_monai.data.phantom import Phantom, make_phantom, make_phantom_data, write_phantom_case

__all__ = [
    "LABEL_FORMATS",
    "LAYOUTS",
    "LAYOUT_CLASSES",
    "OVARIAN_CLASS_FILES",
    "OVARIAN_CLASSES",
    "assign_folds",
    "assign_temporal_blocks",
    "class_masks_to_index",
    "datalist_folds",
    "discover_cases",
    "frame_files",
    "load_datalist",
    "load_label_cine",
    "read_frame_image",
    "temporal_block_report",
    "write_datalist",
    "CLIP_MODES",
    "ClipDataset",
    "ClipSampler",
    "select_frames",
    "DEFAULT_FRAME_TIME_MS",
    "FRAME_SUFFIXES",
    "VOLUME_SUFFIXES",
    "CineReadError",
    "DicomCineReader",
    "dicom_cine_array",
    "has_dicom_preamble",
    "load_cine",
    "natural_key",
    "read_dicom_cine",
    "Phantom",
    "make_phantom",
    "make_phantom_data",
    "write_phantom_case",
]

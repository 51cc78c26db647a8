"""Data readers for medical video (cine) segmentation: DICOM cines, 2-D+t volumes and frame folders."""

from vivim_monai.data.cine import FRAME_SUFFIXES, VOLUME_SUFFIXES, load_cine, natural_key
from vivim_monai.data.clips import CLIP_MODES, ClipDataset, ClipSampler, select_frames
from vivim_monai.data.dicom import (
    DEFAULT_FRAME_TIME_MS,
    CineReadError,
    DicomCineReader,
    dicom_cine_array,
    has_dicom_preamble,
    read_dicom_cine,
)
from vivim_monai.data.phantom import Phantom, make_phantom, write_phantom_case

__all__ = [
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
    "write_phantom_case",
]

"""Data readers for medical video (cine) segmentation."""

from vivim_monai.data.dicom import CineReadError, read_dicom_cine

__all__ = ["CineReadError", "read_dicom_cine"]

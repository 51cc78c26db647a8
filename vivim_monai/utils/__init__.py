"""Generic helpers every other package may use; this package imports nothing else of ``vivim_monai``."""

from vivim_monai.utils.atomic import atomic_write, atomic_write_csv, write_error
from vivim_monai.utils.tensors import argmax_indices

__all__ = ["argmax_indices", "atomic_write", "atomic_write_csv", "write_error"]

"""Selective-scan and causal-conv1d operators with CUDA (mamba-ssm), CPU and pure-PyTorch backends."""

from vivim_monai.ops.backends import BACKENDS, ENV_VAR, available_backends, resolve_backend
from vivim_monai.ops.reference import (
    VIVIM_STAGE_SCAN_SIZES,
    causal_conv1d_torch,
    selective_scan_chunked,
    selective_scan_sequential,
    vivim_scan_inputs,
)
from vivim_monai.ops.scan_order import ScanOrder
from vivim_monai.ops.selective_scan import causal_conv1d, selective_scan

__all__ = [
    "VIVIM_STAGE_SCAN_SIZES",
    "vivim_scan_inputs",
    "BACKENDS",
    "ENV_VAR",
    "ScanOrder",
    "available_backends",
    "causal_conv1d",
    "causal_conv1d_torch",
    "resolve_backend",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_sequential",
]

"""Selective-scan and causal-conv1d operators with CUDA (mamba-ssm), CPU and pure-PyTorch backends."""

from vivim_monai.ops.backends import BACKENDS, ENV_VAR, available_backends, resolve_backend
from vivim_monai.ops.reference import causal_conv1d_torch, selective_scan_chunked, selective_scan_sequential
from vivim_monai.ops.scan_order import ScanOrder
from vivim_monai.ops.selective_scan import causal_conv1d, selective_scan

__all__ = [
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

"""Run-time selection of the selective-scan / causal-conv backend.

Backends, in order of preference for the tensors' device:

* ``cuda``  — mamba-ssm ``selective_scan_fn`` and causal-conv1d ``causal_conv1d_fn`` (GPU only). Both packages
  fail to import without their compiled CUDA extensions, so they are looked up lazily with MONAI's
  ``optional_import`` and used only when importable *and* the tensors live on a CUDA device.
* ``cpu``   — the compiled C++/OpenMP kernel (:mod:`.cpu_kernel`), CPU tensors only; built on first use.
* ``torch`` — the pure-PyTorch chunked scan (:mod:`vivim_monai.ops.reference`), any device.

The choice is ``backend=`` argument > environment variable ``VIVIM_SCAN_BACKEND`` > automatic. Asking
explicitly for a backend that cannot run the given tensors raises a ``RuntimeError`` that says why. While a graph
is captured (``torch.jit.trace``, ``torch.export``; e.g. ``monai.bundle ckpt_export --use_trace True``) the
automatic choice is ``torch``: the compiled kernels are Python calls that no exported graph can hold.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import torch
from monai.utils import optional_import

# imported here, not inside the functions: MONAI Label unloads a bundle's `scripts` package (and takes the bundle off
# sys.path) between its pipeline stages, so an import at call time inside a served network would fail
from vivim_monai.ops import cpu_kernel

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "available_backends",
    "cuda_kernels",
    "resolve_backend",
]

ENV_VAR = "VIVIM_SCAN_BACKEND"
BACKENDS = ("cuda", "cpu", "torch")
_AUTO = ("", "auto")


@functools.lru_cache(maxsize=1)
def cuda_kernels() -> tuple[Callable[..., Any] | None, Callable[..., Any] | None, str]:
    """(selective_scan_fn, causal_conv1d_fn, reason) from mamba-ssm / causal-conv1d, or Nones and the reason."""
    scan_fn, has_scan = optional_import("mamba_ssm.ops.selective_scan_interface", name="selective_scan_fn")
    conv_fn, has_conv = optional_import("causal_conv1d", name="causal_conv1d_fn")
    if has_scan and has_conv:
        return scan_fn, conv_fn, ""
    missing = [name for name, ok in (("mamba-ssm", has_scan), ("causal-conv1d", has_conv)) if not ok]
    return (
        None,
        None,
        (
            f"{' and '.join(missing)} not importable (install requirements-cuda.txt on a CUDA machine; both packages "
            "need their compiled CUDA extensions)"
        ),
    )


def _cpu_kernel_available() -> bool:
    return cpu_kernel.is_available()


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run tensors on ``device`` on this machine, most preferred first."""
    device = torch.device(device)
    names = []
    if device.type == "cuda" and cuda_kernels()[0] is not None:
        names.append("cuda")
    if device.type == "cpu" and _cpu_kernel_available():
        names.append("cpu")
    names.append("torch")
    return names


def resolve_backend(backend: str | None, device: torch.device | str) -> str:
    """Name of the backend that will run tensors on ``device``; see the module docstring for the rules."""
    source = "argument backend"
    requested = backend
    if requested is None:
        requested, source = os.environ.get(ENV_VAR, ""), f"environment variable {ENV_VAR}"
    requested = str(requested).strip().lower()
    if requested in _AUTO:
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            return "torch"  # graph capture records PyTorch ops only; the compiled kernels are opaque Python calls
        return available_backends(device)[0]
    if requested not in BACKENDS:
        raise ValueError(f"{source}={requested!r} is not a scan backend; choose one of {BACKENDS} or 'auto'")
    device = torch.device(device)
    if requested == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"{source}='cuda' but the tensors are on {device}; the CUDA kernels need CUDA tensors")
        if cuda_kernels()[0] is None:
            raise RuntimeError(f"{source}='cuda' is unavailable: {cuda_kernels()[2]}")
    if requested == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"{source}='cpu' but the tensors are on {device}")
        if not _cpu_kernel_available():
            raise RuntimeError(
                f"{source}='cpu' is unavailable: the compiled kernel failed to build "
                f"({cpu_kernel.build_error()}); use 'torch' or 'auto'"
            )
    return requested

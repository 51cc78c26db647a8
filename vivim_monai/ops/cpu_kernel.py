"""The ``cpu`` backend: a compiled C++ selective scan and causal conv1d (forward and backward).

The kernel (``csrc/selective_scan_cpu.cpp``) is built with ``torch.utils.cpp_extension`` on first use (about a minute)
and cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``), keyed by the source, the compiler
flags and the CPU's instruction-set flags, so a cache copied to another machine is never reused wrongly. The build
compiles a copy of the source kept in that cache under the same key (``vivim_sources/<key>/``): ninja rebuilds when
the path or time stamp of a source changes, which compiling the package's own file would do whenever the package is
moved or unpacked again (a packaged bundle, a new checkout). Without a working compiler the build fails once, a
single warning says why, and the automatic backend falls back to the pure-PyTorch scan.

The instruction set is ``-march=native`` unless ``VIVIM_SCAN_MARCH`` names an x86-64 level (``x86-64-v3``: AVX2 +
FMA; ``x86-64-v4``: AVX-512), e.g. to build for a fleet of AVX2 machines or to measure the AVX2 kernel on an AVX-512
one. A level this CPU lacks is refused like a failed build (its missing flags are named), since its code would stop
the process with an illegal instruction. The channel block follows the level (see the source).

Rows (batch x channel) run in parallel on PyTorch's OpenMP thread pool (``torch.set_num_threads``); the state
dimension is vectorised. Half/bfloat16 inputs are computed in float32; float64 stays float64 (gradcheck).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

from vivim_monai.ops.reference import as_grouped, compute_dtype
from vivim_monai.ops.scan_order import ScanOrder

__all__ = [
    "MARCH_ENV_VAR",
    "build_error",
    "causal_conv1d",
    "compiler_flags",
    "instruction_set",
    "is_available",
    "load_extension",
    "selective_scan",
]

_SOURCE = Path(__file__).with_name("csrc") / "selective_scan_cpu.cpp"
# -fno-trapping-math: without it GCC leaves fast_exp's clamp as a branch on AVX2 and the exp runs scalar (16x slower)
_BASE_CFLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-trapping-math"]
MARCH_ENV_VAR = "VIVIM_SCAN_MARCH"
# the CPU flags (/proc/cpuinfo names) each selectable x86-64 level needs (x86-64 psABI micro-architecture levels)
_LEVEL_FLAGS = {
    "native": (),
    "x86-64-v2": ("sse4_2", "ssse3", "popcnt", "cx16"),
    "x86-64-v3": ("avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"),
    "x86-64-v4": ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"),
}
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}
CHUNK = 64  # positions between state checkpoints (backward memory: L / CHUNK states per row)


def _cpu_fingerprint() -> str:
    """The CPU's instruction-set flags: -march=native code must not run on a CPU without them."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        return os.uname().machine


def instruction_set() -> str:
    """The ``-march`` value the kernel is built for: ``VIVIM_SCAN_MARCH`` or ``native``."""
    march = os.environ.get(MARCH_ENV_VAR, "").strip() or "native"
    if march not in _LEVEL_FLAGS:
        raise ValueError(f"{MARCH_ENV_VAR}={march!r}: expected one of {', '.join(_LEVEL_FLAGS)}")
    return march


def compiler_flags(march: str) -> list[str]:
    """The kernel's compiler flags for ``march``."""
    return [*_BASE_CFLAGS, f"-march={march}"]


def _missing_cpu_flags(march: str) -> list[str]:
    """The flags ``march`` needs that this CPU does not report (none for ``native``)."""
    present = set(_cpu_fingerprint().split(":", 1)[-1].split())
    return [flag for flag in _LEVEL_FLAGS[march] if flag not in present]


def _stable_source(source: Path, name: str) -> Path:
    """A copy of ``source`` at a path set by the build key ``name`` alone, written once (later calls keep its time
    stamp, so ninja sees nothing new); rewritten atomically if it differs from ``source``."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    target = root / "vivim_sources" / name / source.name
    data = source.read_bytes()
    if target.is_file() and target.read_bytes() == data:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{source.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return target


def load_extension() -> ModuleType | None:
    """Build (first call) or load the compiled kernel; None, with one warning, when it cannot be built."""
    with _LOCK:
        if "module" in _STATE or "error" in _STATE:
            return _STATE.get("module")  # type: ignore[return-value]
        try:
            march = instruction_set()
            missing = _missing_cpu_flags(march)
            if missing:
                raise RuntimeError(f"{MARCH_ENV_VAR}={march} needs CPU flags this CPU lacks: {', '.join(missing)}")
            flags = compiler_flags(march)
            key = hashlib.sha256(_SOURCE.read_bytes() + " ".join(flags).encode() + _cpu_fingerprint().encode())
            name = f"vivim_scan_cpu_{key.hexdigest()[:12]}"
            from torch.utils.cpp_extension import load

            source = _stable_source(_SOURCE, name)
            _STATE["module"] = load(
                name=name, sources=[str(source)], extra_cflags=flags, extra_ldflags=["-fopenmp"], verbose=False
            )
        except Exception as err:  # no compiler, no headers, a failed build: all mean "use the PyTorch scan"
            _STATE["error"] = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
            warnings.warn(
                f"vivim_monai: the compiled CPU selective scan could not be built ({_STATE['error']}); "
                "falling back to the pure-PyTorch scan, which is several times slower. Install a C++ compiler "
                "and the Python headers to enable it.",
                RuntimeWarning,
                stacklevel=3,
            )
        return _STATE.get("module")  # type: ignore[return-value]


def is_available() -> bool:
    """Whether the compiled CPU kernel can run here (builds it on the first call)."""
    return load_extension() is not None


def build_error() -> str:
    """Why the kernel is unavailable ("" when it is available or has not been tried)."""
    return str(_STATE.get("error", ""))


def _grouped_state_last(mat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(b, N, L) or (b, G, N, L) -> a (b, G, L, N) view with N contiguous (no copy when it already is)."""
    mat = as_grouped(mat).transpose(-1, -2).to(dtype)
    return mat if mat.stride(-1) == 1 else mat.contiguous()


class _SelectiveScanFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, order_kind, frames):
        ext = load_extension()
        dtype = compute_dtype(u)
        u_c, delta_c, A_c = u.to(dtype), delta.to(dtype), A.to(dtype).contiguous()
        B_c, C_c = _grouped_state_last(B, dtype), _grouped_state_last(C, dtype)
        D_c = None if D is None else D.to(dtype).contiguous()
        z_c = None if z is None else z.to(dtype)
        bias_c = None if delta_bias is None else delta_bias.to(dtype).contiguous()
        out, checkpoints = ext.scan_forward(
            u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, delta_softplus, order_kind, frames, CHUNK
        )
        ctx.save_for_backward(u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, checkpoints)
        ctx.config = (
            delta_softplus,
            order_kind,
            frames,
            B.dim(),
            u.dtype,
            [t.dtype if t is not None else None for t in (A, B, C, D, z, delta_bias)],
        )
        return out.to(u.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        u_c, delta_c, A_c, B_c, C_c, D_c, z_c, bias_c, checkpoints = ctx.saved_tensors
        delta_softplus, order_kind, frames, bc_dim, u_dtype, dtypes = ctx.config
        du, ddelta, dA, dB, dC, dD, dz, dbias = load_extension().scan_backward(
            grad_out.to(u_c.dtype),
            u_c,
            delta_c,
            A_c,
            B_c,
            C_c,
            D_c,
            z_c,
            bias_c,
            delta_softplus,
            order_kind,
            frames,
            CHUNK,
            checkpoints,
        )
        dB, dC = dB.transpose(-1, -2), dC.transpose(-1, -2)  # back to (b, G, N, L)
        if bc_dim == 3:
            dB, dC = dB.squeeze(1), dC.squeeze(1)
        a_dtype, b_dtype, c_dtype, d_dtype, z_dtype, bias_dtype = dtypes
        return (
            du.to(u_dtype),
            ddelta.to(u_dtype),
            dA.to(a_dtype),
            dB.to(b_dtype),
            dC.to(c_dtype),
            None if D_c is None else dD.to(d_dtype),
            None if z_c is None else dz.to(z_dtype),
            None if bias_c is None else dbias.to(bias_dtype),
            None,
            None,
            None,
        )


class _CausalConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, silu, order_kind, frames):
        dtype = compute_dtype(x)
        x_c, w_c = x.to(dtype), weight.to(dtype)
        b_c = None if bias is None else bias.to(dtype).contiguous()
        ctx.save_for_backward(x_c, w_c, b_c)
        ctx.config = (silu, order_kind, frames, x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return load_extension().conv_forward(x_c, w_c, b_c, silu, order_kind, frames).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x_c, w_c, b_c = ctx.saved_tensors
        silu, order_kind, frames, x_dtype, w_dtype, b_dtype = ctx.config
        dx, dw, db = load_extension().conv_backward(grad_out.to(x_c.dtype), x_c, w_c, b_c, silu, order_kind, frames)
        return dx.to(x_dtype), dw.to(w_dtype), None if b_c is None else db.to(b_dtype), None, None, None


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    scan_order: ScanOrder | None = None,
) -> torch.Tensor:
    """Selective scan on CPU tensors with the compiled kernel (same contract as ``vivim_monai.ops.selective_scan``)."""
    order = scan_order or ScanOrder()
    return _SelectiveScanFn.apply(
        u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), order.kernel_code, order.num_frames
    )


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    silu: bool = False,
    scan_order: ScanOrder | None = None,
) -> torch.Tensor:
    """Causal depthwise conv1d along ``scan_order`` on CPU tensors; weight (dim, width)."""
    order = scan_order or ScanOrder()
    return _CausalConvFn.apply(x, weight, bias, bool(silu), order.kernel_code, order.num_frames)

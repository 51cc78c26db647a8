"""Selective scan and causal conv1d: every backend on this machine against the sequential reference."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vivim_monai.ops import (
    ENV_VAR,
    VIVIM_STAGE_SCAN_SIZES,
    ScanOrder,
    available_backends,
    causal_conv1d,
    causal_conv1d_torch,
    resolve_backend,
    selective_scan,
    selective_scan_chunked,
    selective_scan_sequential,
    vivim_scan_inputs,
)

FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}  # stated fp32 tolerance (outputs and gradients, values of order 1)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(batch, dim, length, d_state, groups=0, seed=0, dtype=torch.float32, device="cpu"):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator, dtype=dtype) * scale).to(device).requires_grad_()

    bc_shape = (batch, groups, d_state, length) if groups else (batch, d_state, length)
    a_log = torch.log(torch.rand(dim, d_state, generator=generator, dtype=dtype) * 4 + 0.5)
    return {
        "u": rand(batch, dim, length),
        "delta": rand(batch, dim, length, scale=0.5),
        "A": (-torch.exp(a_log)).to(device).requires_grad_(),
        "B": rand(*bc_shape),
        "C": rand(*bc_shape),
        "D": rand(dim),
        "z": rand(batch, dim, length),
        "delta_bias": rand(dim, scale=0.5),
    }


def run(fn, inputs, **kwargs):
    out = fn(**inputs, delta_softplus=True, **kwargs)
    grads = torch.autograd.grad(out.square().sum(), list(inputs.values()))
    return out, dict(zip(inputs, grads))


@pytest.mark.parametrize("length", [1, 2, 7, 33, 130, 257])
@pytest.mark.parametrize("backend", available_backends(DEVICE))
def test_backends_match_sequential_reference(backend, length):
    inputs = make_inputs(2, 6, length, 4, device=DEVICE)
    ref_out, ref_grads = run(selective_scan_sequential, inputs)
    out, grads = run(selective_scan, inputs, backend=backend)
    torch.testing.assert_close(out, ref_out, **FP32_TOL)
    for name in inputs:
        torch.testing.assert_close(grads[name], ref_grads[name], **FP32_TOL, msg=lambda m, n=name: f"grad {n}: {m}")


@pytest.mark.parametrize("chunk_size", [1, 3, 8, 64])
def test_chunked_scan_any_chunk_size_and_groups(chunk_size):
    inputs = make_inputs(1, 8, 45, 3, groups=2, dtype=torch.float64)
    ref = selective_scan_sequential(**inputs, delta_softplus=True)
    out = selective_scan_chunked(**inputs, delta_softplus=True, chunk_size=chunk_size)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)


def test_chunked_scan_gradcheck_float64():
    inputs = make_inputs(1, 3, 11, 2, dtype=torch.float64)
    names = list(inputs)

    def fn(*tensors):
        return selective_scan_chunked(**dict(zip(names, tensors)), delta_softplus=True, chunk_size=4)

    assert torch.autograd.gradcheck(fn, tuple(inputs.values()), eps=1e-6, atol=1e-5)


def test_optional_arguments_and_large_decay_are_stable():
    """No D / z / bias, no softplus; steps with |delta * A| ~ 1e3 must not overflow (decays are never divided)."""
    inputs = make_inputs(1, 4, 64, 4)
    for name in ("D", "z", "delta_bias"):
        inputs.pop(name)
    inputs["delta"] = inputs["delta"].detach().abs() * 200 + 1.0
    ref = selective_scan_sequential(**inputs)
    for backend in available_backends("cpu"):
        out = selective_scan(**inputs, backend=backend)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, **FP32_TOL)


def test_half_precision_inputs_accumulate_in_fp32_and_keep_dtype():
    inputs = {k: v.detach() for k, v in make_inputs(1, 4, 40, 4).items()}
    half = {k: v.to(torch.bfloat16) for k, v in inputs.items()}
    out = selective_scan(**half, delta_softplus=True, backend="torch")
    assert out.dtype == torch.bfloat16
    ref = selective_scan_sequential(**{k: v.float() for k, v in half.items()}, delta_softplus=True)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"u": torch.zeros(2, 4)}, "u must be"),
        ({"delta": torch.zeros(1, 4, 9)}, "delta must match"),
        ({"A": torch.zeros(3, 4)}, "A must be"),
        ({"B": torch.zeros(1, 5, 10)}, "B must be"),
        ({"C": torch.zeros(1, 3, 4, 10)}, "C must be"),
        ({"D": torch.zeros(5)}, "D must be"),
    ],
)
def test_bad_shapes_raise_clear_errors(bad, message):
    inputs = {k: v.detach() for k, v in make_inputs(1, 4, 10, 4).items()}
    inputs.update(bad)
    with pytest.raises(ValueError, match=message):
        selective_scan(**inputs)


@pytest.mark.parametrize("length", [1, 2, 5, 17])
@pytest.mark.parametrize("activation", [None, "silu"])
def test_causal_conv1d_matches_explicit_sum(length, activation):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, length, generator=generator)
    weight, bias = torch.randn(3, 4, generator=generator), torch.randn(3, generator=generator)
    expected = torch.zeros_like(x) + bias[None, :, None]
    for t in range(length):
        for k in range(4):  # weight[:, -1] multiplies the current position, weight[:, 0] the one 3 steps back
            if t - (3 - k) >= 0:
                expected[..., t] += weight[:, k] * x[..., t - (3 - k)]
    if activation:
        expected = torch.nn.functional.silu(expected)
    for backend in available_backends("cpu"):
        out = causal_conv1d(x, weight.unsqueeze(1), bias, activation=activation, backend=backend)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_backend_resolution(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_backend(None, "cpu") == available_backends("cpu")[0]
    assert resolve_backend("torch", "cpu") == "torch"
    monkeypatch.setenv(ENV_VAR, "torch")
    assert resolve_backend(None, "cpu") == "torch"
    assert resolve_backend("cpu", "cpu") == "cpu", "the argument wins over the environment"
    monkeypatch.setenv(ENV_VAR, "fastest")
    with pytest.raises(ValueError, match=ENV_VAR):
        resolve_backend(None, "cpu")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        resolve_backend("cuda", "cpu")
    with pytest.raises(ValueError, match="argument backend"):
        resolve_backend("gpu", "cpu")


ORDERS = [ScanOrder("forward"), ScanOrder("reverse"), ScanOrder("temporal", 1), ScanOrder("temporal", 3)]


def permutation(order: ScanOrder, length: int) -> torch.Tensor:
    """Memory positions in scan order, written out explicitly."""
    if order.kind == "forward":
        return torch.arange(length)
    if order.kind == "reverse":
        return torch.arange(length).flip(0)
    frames, pixels = order.num_frames, length // order.num_frames
    return (torch.arange(frames)[None, :] * pixels + torch.arange(pixels)[:, None]).flatten()


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: f"{o.kind}{o.num_frames}")
@pytest.mark.parametrize("backend", available_backends(DEVICE))
def test_scan_orders_match_explicit_permutation(backend, order):
    inputs = make_inputs(2, 5, 24, 4, device=DEVICE)
    perm = permutation(order, 24).to(DEVICE)
    permuted = {k: (v[..., perm] if v.dim() == 3 else v) for k, v in inputs.items()}
    expected = torch.empty_like(inputs["u"])
    expected[..., perm] = selective_scan_sequential(**permuted, delta_softplus=True)
    ref_grads = torch.autograd.grad(expected.square().sum(), list(inputs.values()))
    out = selective_scan(**inputs, delta_softplus=True, backend=backend, scan_order=order)
    grads = torch.autograd.grad(out.square().sum(), list(inputs.values()))
    torch.testing.assert_close(out, expected, **FP32_TOL)
    for name, grad, ref in zip(inputs, grads, ref_grads):
        torch.testing.assert_close(grad, ref, **FP32_TOL, msg=lambda m, n=name: f"grad {n}: {m}")

    x = inputs["u"].detach().requires_grad_()
    weight, bias = inputs["D"].detach()[:, None].repeat(1, 4).requires_grad_(), inputs["delta_bias"]
    conv_expected = torch.empty_like(x)
    conv_expected[..., perm] = causal_conv1d(x[..., perm], weight, bias, activation="silu", backend="torch")
    conv = causal_conv1d(x, weight, bias, activation="silu", backend=backend, scan_order=order)
    torch.testing.assert_close(conv, conv_expected, **FP32_TOL)
    for grad, ref in zip(
        torch.autograd.grad(conv.sum(), [x, weight, bias]), torch.autograd.grad(conv_expected.sum(), [x, weight, bias])
    ):
        torch.testing.assert_close(grad, ref, **FP32_TOL)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="compiled CPU kernel unavailable")
@pytest.mark.parametrize("dim, groups", [(16, 0), (40, 0), (36, 2), (7, 0)])
@pytest.mark.parametrize("order", ORDERS[:2] + ORDERS[3:], ids=lambda o: f"{o.kind}{o.num_frames}")
def test_cpu_kernel_channel_blocks_with_16_states(dim, groups, order):
    """N = 16 in float32 takes the channel-vectorised path: full and partial blocks of 16 channels, groups, orders."""
    inputs = make_inputs(2, dim, 150, 16, groups=groups)
    perm = permutation(order, 150)
    permuted = {k: (v[..., perm] if v.dim() in (3, 4) and v.shape[-1] == 150 else v) for k, v in inputs.items()}
    expected = torch.empty_like(inputs["u"])
    expected[..., perm] = selective_scan_sequential(**permuted, delta_softplus=True)
    out = selective_scan(**inputs, delta_softplus=True, backend="cpu", scan_order=order)
    torch.testing.assert_close(out, expected, **FP32_TOL)
    grads = torch.autograd.grad(out.square().sum(), list(inputs.values()))
    ref_grads = torch.autograd.grad(expected.square().sum(), list(inputs.values()))
    for name, grad, ref in zip(inputs, grads, ref_grads):
        torch.testing.assert_close(grad, ref, atol=1e-3, rtol=1e-3, msg=lambda m, n=name: f"grad {n}: {m}")


def test_temporal_order_needs_whole_frames():
    inputs = {k: v.detach() for k, v in make_inputs(1, 4, 10, 4).items()}
    with pytest.raises(ValueError, match="not a multiple of T=3"):
        selective_scan(**inputs, scan_order=ScanOrder("temporal", 3))
    with pytest.raises(ValueError, match="scan order kind"):
        ScanOrder("diagonal")


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="compiled CPU kernel unavailable")
@pytest.mark.parametrize("order", ORDERS[:2] + ORDERS[3:], ids=lambda o: f"{o.kind}{o.num_frames}")
@pytest.mark.parametrize("groups", [0, 2])
def test_cpu_kernel_gradcheck_float64(order, groups):
    inputs = make_inputs(2, 4, 9 if order.kind != "temporal" else 12, 3, groups=groups, dtype=torch.float64)
    names = list(inputs)

    def scan(*tensors):
        return selective_scan(**dict(zip(names, tensors)), delta_softplus=True, backend="cpu", scan_order=order)

    assert torch.autograd.gradcheck(scan, tuple(inputs.values()), eps=1e-6, atol=1e-5)
    weight = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    x, bias = inputs["u"], inputs["D"]

    def conv(x, w, b):
        return causal_conv1d(x, w, b, activation="silu", backend="cpu", scan_order=order)

    assert torch.autograd.gradcheck(conv, (x, weight, bias), eps=1e-6, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="compiled CPU kernel unavailable")
@pytest.mark.parametrize("dim, length", VIVIM_STAGE_SCAN_SIZES)
def test_cpu_kernel_fp32_parity_at_vivim_stage_sizes(dim, length):
    """Vivim's four stage sizes for a 5 x 256 x 256 clip (D = 2C, L = T h w, N = 16), outputs and gradients."""
    inputs = vivim_scan_inputs(dim, length)
    inputs = {k: v.requires_grad_() for k, v in inputs.items()}
    grad_out = torch.randn(1, dim, length, generator=torch.Generator().manual_seed(1))
    ref = selective_scan_chunked(**inputs, delta_softplus=True)
    ref_grads = torch.autograd.grad(ref, list(inputs.values()), grad_out)
    with torch.no_grad():
        torch.testing.assert_close(ref, selective_scan_sequential(**inputs, delta_softplus=True), **FP32_TOL)
    out = selective_scan(**inputs, delta_softplus=True, backend="cpu")
    grads = torch.autograd.grad(out, list(inputs.values()), grad_out)
    torch.testing.assert_close(out, ref, **FP32_TOL)
    for name, grad, expected in zip(inputs, grads, ref_grads):
        scale = expected.abs().max().item()  # parameter gradients sum over L*D terms: compare relative to their size
        torch.testing.assert_close(grad / scale, expected / scale, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: n + m)


def test_failed_kernel_build_falls_back_with_one_warning(monkeypatch):
    from torch.utils import cpp_extension

    from vivim_monai.ops import cpu_kernel

    def no_compiler(*args, **kwargs):
        raise RuntimeError("error: command 'c++' failed: No such file or directory")

    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setattr(cpp_extension, "load", no_compiler)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch scan") as caught:
        assert resolve_backend(None, "cpu") == "torch"
        assert resolve_backend(None, "cpu") == "torch"
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1, "warned once"
    with pytest.raises(RuntimeError, match="failed to build.*No such file"):
        resolve_backend("cpu", "cpu")
    inputs = {k: v.detach() for k, v in make_inputs(1, 4, 20, 4).items()}
    torch.testing.assert_close(selective_scan(**inputs), selective_scan_sequential(**inputs), **FP32_TOL)


@pytest.mark.skipif("cpu" not in available_backends("cpu"), reason="compiled CPU kernel unavailable")
def test_cpu_kernel_tile_follows_instruction_set():
    """AVX-512 builds process 16 channels (one zmm vector) x 16 states per block; other builds 8 channels (one ymm)."""
    from vivim_monai.ops import cpu_kernel

    march = cpu_kernel.instruction_set()
    avx512 = march == "x86-64-v4" or (march == "native" and "avx512f" in cpu_kernel._cpu_fingerprint().split())
    assert tuple(cpu_kernel.load_extension().tile()) == ((16, 16) if avx512 else (8, 16))


@pytest.mark.parametrize(
    "march, fingerprint, message",
    [
        ("x86-64-v9", None, "VIVIM_SCAN_MARCH='x86-64-v9': expected one of native"),
        ("x86-64-v4", "flags\t\t: fpu sse2 avx avx2 fma", "x86-64-v4 needs CPU flags this CPU lacks: avx512f"),
    ],
)
def test_unusable_instruction_set_falls_back_with_the_reason(monkeypatch, march, fingerprint, message):
    """A level this CPU cannot run (or a typo) is refused before compiling, like a failed build, naming why."""
    from torch.utils import cpp_extension

    from vivim_monai.ops import cpu_kernel

    def must_not_build(*args, **kwargs):
        raise AssertionError("compiled a kernel for an unusable instruction set")

    monkeypatch.setattr(cpu_kernel, "_STATE", {})
    monkeypatch.setattr(cpp_extension, "load", must_not_build)
    if fingerprint:
        monkeypatch.setattr(cpu_kernel, "_cpu_fingerprint", lambda: fingerprint)
    monkeypatch.setenv(cpu_kernel.MARCH_ENV_VAR, march)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch scan"):
        assert resolve_backend(None, "cpu") == "torch"
    assert message in cpu_kernel.build_error()
    with pytest.raises(RuntimeError, match="failed to build"):
        resolve_backend("cpu", "cpu")


@pytest.mark.slow
def test_avx2_build_matches_reference():
    """The kernel built for AVX2 + FMA (x86-64-v3, 8-channel blocks) passes this module's kernel tests in a process of
    its own (the build is chosen once per process)."""
    from vivim_monai.ops import cpu_kernel

    missing = cpu_kernel._missing_cpu_flags("x86-64-v3")
    if missing:
        pytest.skip(f"this CPU cannot run AVX2 code (lacks {', '.join(missing)})")
    env = dict(os.environ, **{cpu_kernel.MARCH_ENV_VAR: "x86-64-v3"})
    env.pop(ENV_VAR, None)
    selected = "tile_follows or channel_blocks or gradcheck_float64 or scan_orders or backends_match or stage_sizes"
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selected]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_kernels_match_reference_when_installed():
    if "cuda" not in available_backends("cuda"):
        pytest.skip("mamba-ssm / causal-conv1d CUDA kernels are not installed")
    inputs = make_inputs(2, 16, 300, 16, device="cuda")
    ref_out, ref_grads = run(selective_scan_sequential, inputs)
    out, grads = run(selective_scan, inputs, backend="cuda")
    torch.testing.assert_close(out, ref_out, atol=1e-3, rtol=1e-3)
    for name in inputs:
        torch.testing.assert_close(grads[name], ref_grads[name], atol=1e-2, rtol=1e-2)


def test_cuda_dispatch_wiring_with_stand_in_kernels(monkeypatch):
    """The cuda branch passes mamba-ssm's positional order and contiguous scan-ordered operands (stand-in kernels)."""
    scan_module = importlib.import_module("vivim_monai.ops.selective_scan")  # the module, not the function
    inputs = {k: v.detach() for k, v in make_inputs(2, 5, 24, 4).items()}
    weight = torch.randn(5, 4)
    expected = [
        (
            selective_scan(**inputs, delta_softplus=True, backend="torch", scan_order=order),
            causal_conv1d(inputs["u"], weight, None, "silu", backend="torch", scan_order=order),
        )
        for order in ORDERS
    ]
    calls = []

    def fake_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        calls.append("scan")
        assert all(t.is_contiguous() for t in (u, delta, B, C, z))
        return selective_scan_sequential(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    def fake_conv(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False, activation=None):
        """causal-conv1d 1.7.0's ``causal_conv1d_fn`` signature: ``activation`` only by keyword."""
        assert seq_idx is None and initial_states is None and not return_final_states
        calls.append("conv")
        assert x.is_contiguous() and weight.dim() == 2
        return causal_conv1d_torch(x, weight, bias, activation)

    monkeypatch.setattr(scan_module, "cuda_kernels", lambda: (fake_scan, fake_conv, ""))
    monkeypatch.setattr(scan_module, "resolve_backend", lambda backend, device: "cuda")
    for order, (scan_expected, conv_expected) in zip(ORDERS, expected):
        torch.testing.assert_close(selective_scan(**inputs, delta_softplus=True, scan_order=order), scan_expected)
        torch.testing.assert_close(causal_conv1d(inputs["u"], weight, None, "silu", scan_order=order), conv_expected)
    assert calls.count("scan") == len(ORDERS) and calls.count("conv") == len(ORDERS)

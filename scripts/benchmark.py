"""Benchmarks of vivim-monai; prints Markdown tables whose numbers go into docs/performance.md (never into tests).

    python scripts/benchmark.py scan      # selective scan: compiled CPU vs PyTorch references (vs mamba-ssm on CUDA)
    python scripts/benchmark.py forward   # Vivim inference latency per variant and backend vs spatial-only
    python scripts/benchmark.py memory    # peak inference memory vs clip length, ST-Mamba vs global attention
    python scripts/benchmark.py all       # the three above, in one run
    python scripts/benchmark.py arms      # the comparison's networks (configs/*.json overlays): frames/s, parameters
    python scripts/benchmark.py decode    # DICOM decoding: load_cine vs raw pydicom (../shared/data/dicom-cine)
    python scripts/benchmark.py export    # exported Vivim (TorchScript, torch.export, ONNX Runtime) vs eager PyTorch
    python scripts/benchmark.py isa       # the CPU scan built for each instruction set vs its exp bound and mambapy
    python scripts/benchmark.py postprocess  # evaluation outside the network: argmax and per-frame metrics, per case
    python scripts/benchmark.py train     # training frames/s through the bundle vs a plain PyTorch loop, and where
                                          # the bundle's time goes (data pipeline alone, one-time case caching)
    python scripts/benchmark.py layout    # a per-frame network's training and inference frames/s, channels-last
                                          # (NHWC, the default) against the contiguous (NCHW) layout

All rows of one run are measured side by side on the same machine, so their ratios are comparable. Times are the
median of ``--repeats`` runs after a warm-up (CUDA is synchronised around every run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from vivim_monai.metrics import DeviceTimer, time_calls
from vivim_monai.networks import Vivim
from vivim_monai.networks.blocks import TriDirectionalMamba
from vivim_monai.ops import (
    VIVIM_STAGE_SCAN_SIZES,
    available_backends,
    cpu_kernel,
    selective_scan,
    selective_scan_chunked,
    selective_scan_sequential,
    vivim_scan_inputs,
)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def time_call(fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True) -> float:
    """Median seconds over ``repeats`` calls (after one warm-up call), each timed between device synchronisations."""
    return statistics.median(time_calls(fn, repeats, device, warmup=int(warmup)))


# ----------------------------------------------------------------------------------------------------------- scan
def scan_inputs(dim: int, length: int, device: torch.device, grad: bool) -> dict[str, torch.Tensor]:
    return {k: v.to(device).requires_grad_(grad) for k, v in vivim_scan_inputs(dim, length).items()}


def scan_implementations(device: torch.device) -> dict[str, Callable[..., torch.Tensor]]:
    impls: dict[str, Callable[..., torch.Tensor]] = {"sequential (PyTorch loop)": selective_scan_sequential}
    impls["chunked (PyTorch ops)"] = selective_scan_chunked
    for backend in available_backends(device):
        if backend != "torch":
            impls[f"{backend} backend"] = lambda *a, b=backend, **k: selective_scan(*a, backend=b, **k)
    return impls


def exp_bound() -> tuple[float, str]:
    """Vectorised exp throughput (elements/s) on all threads: the kernel's fast_exp, else torch.exp."""
    ext = cpu_kernel.load_extension()
    if ext is not None:
        elements, repeats = 4096, 20000
        seconds = ext.exp_throughput(elements, repeats)
        return elements * repeats * torch.get_num_threads() / seconds, "kernel fast_exp, L1-resident"
    values = torch.randn(1 << 16)
    seconds = time_call(lambda: torch.exp(values), 50, torch.device("cpu"))
    return values.numel() / seconds, "torch.exp, L2-resident"


def bench_scan(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    impls = scan_implementations(device)
    print("### Selective scan (B = 1, N = 16, softplus delta, D skip, SiLU(z) gate, fp32)\n")
    print("| D | L | implementation | forward (ms) | forward+backward (ms) | fwd speed-up | fwd+bwd speed-up |")
    print("|---|---|---|---|---|---|---|")
    fastest: dict[tuple[int, int], float] = {}
    for dim, length in VIVIM_STAGE_SCAN_SIZES:
        baseline: tuple[float, float] | None = None
        for name, fn in impls.items():
            sequential = fn is selective_scan_sequential  # minutes at stage 1 with autograd: run it once
            repeats = 1 if sequential else args.repeats
            inputs = scan_inputs(dim, length, device, grad=False)
            with torch.no_grad():
                forward = time_call(lambda: fn(**inputs, delta_softplus=True), repeats, device)
            inputs = scan_inputs(dim, length, device, grad=True)

            def forward_backward():
                fn(**inputs, delta_softplus=True).sum().backward()

            both = time_call(forward_backward, repeats, device, warmup=not sequential)
            baseline = baseline or (forward, both)
            print(
                f"| {dim} | {length} | {name} | {forward * 1e3:.1f} | {both * 1e3:.1f} | "
                f"{baseline[0] / forward:.1f}x | {baseline[1] / both:.1f}x |"
            )
            if name == "cpu backend":
                fastest[(dim, length)] = forward
    if fastest and device.type == "cpu":
        rate, source = exp_bound()
        print(f"\nVectorised exp throughput ({source}, {torch.get_num_threads()} threads): {rate / 1e9:.2f} G/s\n")
        print("| D | L | exps (D·L·N) | exp-bound time (ms) | cpu backend forward (ms) | fraction of bound |")
        print("|---|---|---|---|---|---|")
        for (dim, length), seconds in fastest.items():
            exps = dim * length * 16
            print(
                f"| {dim} | {length} | {exps / 1e6:.1f} M | {exps / rate * 1e3:.1f} | {seconds * 1e3:.1f} | "
                f"{exps / rate / seconds:.2f} |"
            )
    print()


# ------------------------------------------------------------------------------------------------------------ isa
def mambapy_scan(u, delta, A, B, C, D, z, delta_bias):
    """The same selective scan (softplus step, D skip, SiLU gate) through mambapy's parallel scan (Blelloch, in
    PyTorch ops; mambapy 1.2.0, MIT): the operands expanded to (B, L, D, N), the formula of its Mamba block."""
    from mambapy.pscan import pscan

    x = u.transpose(1, 2)
    step = torch.nn.functional.softplus(delta + delta_bias[:, None]).transpose(1, 2)
    decay = torch.exp(step.unsqueeze(-1) * A)
    drive = step.unsqueeze(-1) * B.transpose(1, 2).unsqueeze(2) * x.unsqueeze(-1)
    states = pscan(decay, drive)
    y = (states @ C.transpose(1, 2).unsqueeze(-1)).squeeze(-1) + D * x
    return (y * torch.nn.functional.silu(z.transpose(1, 2))).transpose(1, 2)


def isa_worker(args: argparse.Namespace) -> None:
    """One build (``VIVIM_SCAN_MARCH`` of this process): forward times, exp bound, mambapy; one JSON line."""
    ext = cpu_kernel.load_extension()
    if ext is None:
        print(json.dumps({"march": os.environ.get(cpu_kernel.MARCH_ENV_VAR, ""), "error": cpu_kernel.build_error()}))
        return
    rate, _ = exp_bound()
    rows = []
    for dim, length in VIVIM_STAGE_SCAN_SIZES:
        inputs = vivim_scan_inputs(dim, length)
        with torch.no_grad():
            ours = selective_scan(**inputs, delta_softplus=True, backend="cpu")
            forward = time_call(
                lambda: selective_scan(**inputs, delta_softplus=True, backend="cpu"), args.repeats, "cpu"
            )
            row = {"dim": dim, "length": length, "forward": forward, "bound": dim * length * 16 / rate}
            try:
                theirs = mambapy_scan(**inputs)
            except ImportError:
                row["mambapy"] = None
            else:
                torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=2e-3)  # same maths, or the ratio means nothing
                row["mambapy"] = time_call(lambda: mambapy_scan(**inputs), args.repeats, "cpu")
        rows.append(row)
    print(json.dumps({"march": cpu_kernel.instruction_set(), "tile": list(ext.tile()), "exp_rate": rate, "rows": rows}))


def bench_isa(args: argparse.Namespace) -> None:
    """Each instruction set in its own process (the build is chosen at import), one after the other."""
    print("### CPU scan per instruction set (B = 1, N = 16, softplus delta, D skip, SiLU(z) gate, fp32, forward)\n")
    print(
        "| build (-march) | tile (channels x states) | exp (G/s) | D | L | forward (ms) | exp bound (ms) | "
        "fraction of bound | mambapy pscan (ms) | speed-up vs mambapy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for march in args.marches:
        env = dict(os.environ, **{cpu_kernel.MARCH_ENV_VAR: march})
        command = [sys.executable, __file__, "--repeats", str(args.repeats)]
        command += ["--threads", str(args.threads)] if args.threads else []
        result = subprocess.run(command + ["isa-worker"], env=env, capture_output=True, text=True, check=True)
        found = json.loads(result.stdout.strip().splitlines()[-1])
        if "error" in found:
            print(f"| {march} | build failed: {found['error']} |  |  |  |  |  |  |  |  |")
            continue
        lanes, states = found["tile"]
        for row in found["rows"]:
            theirs = row["mambapy"]
            cells = ("-", "-") if theirs is None else (f"{theirs * 1e3:.1f}", f"{theirs / row['forward']:.1f}x")
            print(
                f"| {march} | {lanes} x {states} | {found['exp_rate'] / 1e9:.2f} | {row['dim']} | {row['length']} | "
                f"{row['forward'] * 1e3:.1f} | {row['bound'] * 1e3:.1f} | {row['bound'] / row['forward']:.2f} | "
                f"{cells[0]} | {cells[1]} |"
            )
    print()


# ---------------------------------------------------------------------------------------------------------- train
def _train_datalist(args: argparse.Namespace, folder: str) -> str:
    """A datalist of the first ``--cases`` cases of ``--data`` (real data), written to ``folder``."""
    from vivim_monai.data import discover_cases, write_datalist

    root = os.path.abspath(args.data)
    entries = discover_cases(root, layout=args.layout)[: args.cases]
    if not entries:
        raise SystemExit(f"{root}: no {args.layout} cases")
    path = os.path.join(folder, "datalist.json")
    write_datalist(path, entries, root, args.layout, class_names=["background", "foreground"])
    return path


def bench_train(args: argparse.Namespace) -> None:
    """One epoch of ``monai.bundle``'s train workflow (``train.json`` + dataset overlay + model overlay, in this
    process) against a plain loop (the same network, loss, optimiser, batch and size on tensors already in memory),
    plus the bundle's data pipeline alone (its DataLoader: clip assembly and augmentation, no network)."""
    import tempfile

    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    bundle = os.path.join(os.path.dirname(__file__), "..", "bundle", "configs")
    with tempfile.TemporaryDirectory() as folder:
        datalist = _train_datalist(args, folder)
        configs = [os.path.join(bundle, "train.json"), args.dataset_config, args.overlay]
        overrides = {"datalist": datalist, "fold": -1, "epochs": 1, "bundle_root": folder, "num_workers": 0}
        start = time.perf_counter()
        workflow = ConfigWorkflow(
            config_file=[os.path.abspath(c) for c in configs],
            meta_file=os.path.join(bundle, "metadata.json"),
            logging_file=os.path.join(bundle, "logging.conf"),
            workflow_type="train",
            **overrides,
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer")
        caching = time.perf_counter() - start  # parsing, network, and decoding + resizing every case once
        stamps: list[tuple[float, int]] = []
        trainer.add_event_handler(
            Events.ITERATION_COMPLETED,
            lambda engine: stamps.append(
                (time.perf_counter(), sum(item["image"].shape[-1] for item in engine.state.batch))
            ),
        )
        workflow.run()
        workflow.finalize()
        warm = stamps[args.warmup :]
        bundle_rate = sum(n for _, n in warm[1:]) / (warm[-1][0] - warm[0][0])
        loader = workflow.parser.get_parsed_content("train#dataloader")
        loaded, start = 0, time.perf_counter()
        shapes = []
        for batch in loader:
            shapes.append(tuple(batch["image"].shape))  # (B, C, H, W, T)
            loaded += shapes[-1][0] * shapes[-1][-1]
        data_rate = loaded / (time.perf_counter() - start)

        network = workflow.parser.get_parsed_content("network_def", instantiate=True).train()
        loss = workflow.parser.get_parsed_content("loss", instantiate=True)
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=0.01)
        shape = shapes[0]
        image = torch.randn(shape)
        label = (torch.rand((shape[0], 1, *shape[2:])) > 0.8).to(torch.uint8)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            loss(network(image), label).backward()
            optimizer.step()

        steps = max(len(warm) - 1, 3)
        plain = time_call(step, steps, torch.device("cpu"), warmup=True)
        plain_rate = shape[0] * shape[-1] / plain
    batch, frames = shape[0], shape[-1]
    print(f"### Training throughput: {os.path.basename(args.overlay)} on {os.path.basename(args.dataset_config)}\n")
    print(f"{args.cases} cases of `{args.data}`, batch {batch} x {frames} frame(s) of {shape[2]} x {shape[3]}, fp32.\n")
    print("| what | frames/s | relative to the plain loop |")
    print("|---|---|---|")
    print(f"| plain PyTorch loop (tensors in memory) | {plain_rate:.2f} | 1.00 |")
    print(
        f"| monai.bundle train workflow (epoch after {args.warmup} warm-up iterations) | {bundle_rate:.2f} | "
        f"{bundle_rate / plain_rate:.2f} |"
    )
    print(
        f"| the bundle's DataLoader alone (clips + augmentation, no network) | {data_rate:.1f} | "
        f"{data_rate / plain_rate:.1f} |"
    )
    print(
        f"\nOne-time set-up before the first iteration (parse, build, decode and resize every case): {caching:.1f} s\n"
    )


# -------------------------------------------------------------------------------------------------------- forward
def bench_forward(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    backends = args.backends or available_backends(device)
    x = torch.randn(1, 3, args.size, args.size, args.frames, device=device)
    print(f"### Vivim inference, 1 x 3 x {args.size} x {args.size} x {args.frames} clip, fp32\n")
    print("| variant | params (M) | scan backend | latency (s) | frames/s | ST-Mamba overhead vs spatial-only |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        torch.manual_seed(0)
        spatial = Vivim(variant, mamba_depths=(0, 0, 0, 0)).to(device).eval()
        with torch.inference_mode():
            base = time_call(lambda: spatial(x), args.repeats, device)
        params = sum(p.numel() for p in spatial.parameters()) / 1e6
        print(f"| {variant} spatial-only | {params:.2f} | - | {base:.3f} | {args.frames / base:.2f} | - |")
        for backend in backends:
            torch.manual_seed(0)
            net = Vivim(variant, scan_backend=backend).to(device).eval()
            with torch.inference_mode():
                median = time_call(lambda: net(x), args.repeats, device)
            params = sum(p.numel() for p in net.parameters()) / 1e6
            print(
                f"| {variant} | {params:.2f} | {backend} | {median:.3f} | {args.frames / median:.2f} | "
                f"+{(median / base - 1) * 100:.0f} % |"
            )
        if device.type == "cuda":
            for dtype in (torch.bfloat16, torch.float16):
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype):
                    median = time_call(lambda: net(x), args.repeats, device)
                print(
                    f"| {variant} autocast {str(dtype).split('.')[-1]} | {params:.2f} | {backends[0]} | "
                    f"{median:.3f} | {args.frames / median:.2f} | - |"
                )
    print()


# --------------------------------------------------------------------------------------------------------- layout
def bench_layout(args: argparse.Namespace) -> None:
    """Training steps (loss, backward, AdamW) and inference of a per-frame network on frame batches, with its
    weights and frames channels-last (``FrameWise``'s default) and contiguous, timed in turn (interleaved medians)."""
    from vivim_monai.losses import FrameDiceCELoss

    torch.manual_seed(0)
    image = torch.randn(args.batch, 3, args.size, args.size, 1)
    label = (torch.rand(args.batch, 1, args.size, args.size, 1) > 0.8).to(torch.uint8)
    loss = FrameDiceCELoss()
    rows = {}
    for name, channels_last in (("channels-last (NHWC, default)", True), ("contiguous (NCHW)", False)):
        torch.manual_seed(0)
        network = network_from_overlay(args.overlay, overrides={"network_def#channels_last": channels_last})
        optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, weight_decay=0.01)

        def train_step(network: nn.Module = network, optimizer: torch.optim.Optimizer = optimizer) -> None:
            network.train()
            optimizer.zero_grad(set_to_none=True)
            loss(network(image), label).backward()
            optimizer.step()

        def infer(network: nn.Module = network) -> None:
            network.eval()
            with torch.inference_mode():
                network(image)

        rows[name] = (train_step, infer)
    calls = [call for pair in rows.values() for call in pair]
    seconds = _interleaved_medians(calls, args.repeats)
    print(f"### Layout of a per-frame network: {os.path.basename(args.overlay)}\n")
    print(f"Batches of {args.batch} frames of {args.size} x {args.size}, fp32, {torch.get_num_threads()} thread(s).\n")
    print("| layout | training frames/s | inference frames/s | training speed-up | inference speed-up |")
    print("|---|---|---|---|---|")
    base_train, base_infer = seconds[2], seconds[3]
    for index, name in enumerate(rows):
        train, infer = seconds[2 * index], seconds[2 * index + 1]
        print(
            f"| {name} | {args.batch / train:.2f} | {args.batch / infer:.2f} | {base_train / train:.2f}× | "
            f"{base_infer / infer:.2f}× |"
        )
    print()


# ----------------------------------------------------------------------------------------------------------- arms
def network_from_overlay(
    overlay: str, in_channels: int = 3, num_classes: int = 2, overrides: dict[str, object] | None = None
) -> nn.Module:
    """The ``network_def`` of a network overlay (``configs/<name>.json``) on top of the bundle's train.json."""
    from monai.bundle import ConfigParser

    from vivim_monai.bundle_cli import find_bundle

    parser = ConfigParser()
    parser.read_config([str(find_bundle() / "configs" / "train.json"), overlay])
    parser["in_channels"], parser["class_names"] = in_channels, [f"class {k}" for k in range(num_classes)]
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


def bench_arms(args: argparse.Namespace) -> None:
    """Latency of each comparison arm at one clip size, and its ratio to the first arm (all in one run)."""
    device = torch.device(args.device)
    x = torch.randn(1, 3, args.size, args.size, args.frames, device=device)
    print(f"### Comparison networks, inference of a 1 x 3 x {args.size} x {args.size} x {args.frames} clip, fp32\n")
    print("| network (overlay) | params (M) | latency (s) | frames/s | frames/s vs first row |")
    print("|---|---|---|---|---|")
    first = None
    for overlay in args.overlays:
        torch.manual_seed(0)
        net = network_from_overlay(overlay).to(device).eval()
        with torch.inference_mode():
            median = time_call(lambda: net(x), args.repeats, device)
        first = first or median
        params = sum(p.numel() for p in net.parameters()) / 1e6
        name = os.path.splitext(os.path.basename(overlay))[0]
        print(f"| {name} | {params:.2f} | {median:.3f} | {args.frames / median:.2f} | {first / median:.2f}x |")
    print()


# --------------------------------------------------------------------------------------------------------- memory
class GlobalAttentionMixer(nn.Module):
    """Full spatio-temporal self-attention over all T*h*w tokens with an explicit attention matrix (comparator)."""

    def __init__(self, dim: int, heads: int = 1) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, num_frames: int, height: int, width: int) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) * (dim // self.heads) ** -0.5, dim=-1)
        return self.proj((attention @ v).transpose(1, 2).reshape(batch, length, dim))


def memory_worker(args: argparse.Namespace) -> None:
    """One measurement in a fresh process: peak resident memory of one inference (prints JSON)."""
    torch.manual_seed(0)
    net = Vivim(args.variant, in_channels=3, out_channels=2).eval()
    if args.mixer == "attention":
        for module in list(net.modules()):
            for name, child in module.named_children():
                if isinstance(child, TriDirectionalMamba):
                    setattr(module, name, GlobalAttentionMixer(child.dim))
    x = torch.randn(1, 3, args.size, args.size, args.frames)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.inference_mode(), DeviceTimer() as timer:
        net(x)
    seconds = timer.seconds
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_mb": peak / 1024, "increase_mb": (peak - before) / 1024, "seconds": seconds}))


def bench_memory(args: argparse.Namespace) -> None:
    print(f"### Peak inference memory vs clip length, Vivim-{args.variant} at {args.size}x{args.size}, CPU\n")
    print("Each row runs in a fresh process; 'increase' is peak RSS during the forward pass minus RSS before it.\n")
    print("| mixer | T | stage-1 tokens | peak RSS (MB) | increase (MB) | time (s) |")
    print("|---|---|---|---|---|---|")
    results: dict[str, dict[int, float]] = {"mamba": {}, "attention": {}}
    for mixer in ("mamba", "attention"):
        for frames in args.lengths:
            tokens = frames * (args.size // 4) ** 2
            if mixer == "attention" and tokens**2 * 4 / 2**30 > args.attention_budget_gb:
                print(
                    f"| global attention | {frames} | {tokens} | not run: the stage-1 attention matrix alone needs "
                    f"{tokens**2 * 4 / 2**30:.0f} GiB (> {args.attention_budget_gb} GiB budget) | - | - |"
                )
                continue
            command = [
                sys.executable,
                __file__,
                "memory-worker",
                "--variant",
                args.variant,
                "--mixer",
                mixer,
                "--frames",
                str(frames),
                "--size",
                str(args.size),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(
                    f"| {mixer} | {frames} | {tokens} | failed: {done.stderr.strip().splitlines()[-1][:80]} | - | - |"
                )
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            results[mixer][frames] = row["increase_mb"]
            label = "ST-Mamba" if mixer == "mamba" else "global attention"
            print(
                f"| {label} | {frames} | {tokens} | {row['peak_mb']:.0f} | {row['increase_mb']:.0f} | "
                f"{row['seconds']:.2f} |"
            )
    for mixer, by_length in results.items():
        if len(by_length) >= 2:
            short, long = min(by_length), max(by_length)
            print(
                f"\n{mixer}: increase at T={long} / T={short} = {by_length[long] / by_length[short]:.2f}x "
                f"(frames ratio {long / short:.0f}x)"
            )
    print()


# --------------------------------------------------------------------------------------------------------- decode
def bench_decode(args: argparse.Namespace) -> None:
    """load_cine versus pydicom (dcmread + pixel_array, + apply_color_lut for PALETTE COLOR) on a folder's DICOMs."""
    import pydicom

    from vivim_monai.data import load_cine

    files = sorted((p for p in os.scandir(args.folder) if p.name.lower().endswith(".dcm")), key=lambda p: p.name)
    if not files:
        raise SystemExit(f"{args.folder}: no .dcm files")
    print(f"### DICOM decoding, {args.folder}, median of {args.repeats}\n")
    print(
        "| file | shape (C, H, W, T) | pydicom (ms) | load_cine (ms) | overhead | load_cine float32 (ms) | overhead |"
    )
    print("|---|---|---|---|---|---|---|")
    totals = np.zeros(3)
    for entry in files:
        calls = [
            lambda: _pydicom_pixels(pydicom.dcmread(entry.path)),
            lambda: load_cine(entry.path),
            lambda: load_cine(entry.path, dtype=torch.float32),
        ]
        times = _interleaved_medians(calls, args.repeats)
        totals += times
        print(_decode_row(entry.name, str(tuple(load_cine(entry.path).shape)), times))
    print(_decode_row("all", "-", totals) + "\n")


def _interleaved_medians(calls: list[Callable[[], object]], repeats: int) -> np.ndarray:
    """Median seconds of each call, timed in turn within every repeat so machine drift hits all of them alike."""
    for call in calls:
        call()  # warm-up
    times = np.zeros((repeats, len(calls)))
    for repeat in range(repeats):
        for index, call in enumerate(calls):
            times[repeat, index] = time_calls(call, 1, warmup=0)[0]
    return np.median(times, axis=0)


def _pydicom_pixels(ds) -> np.ndarray:
    """pydicom's own decoding to displayable pixels (palette indices through the colour lookup table)."""
    from pydicom.pixels import apply_color_lut

    pixels = ds.pixel_array
    return apply_color_lut(pixels, ds) if ds.PhotometricInterpretation == "PALETTE COLOR" else pixels


def _decode_row(name: str, shape: str, times: np.ndarray) -> str:
    raw, native, as_float = times * 1e3
    return (
        f"| {name} | {shape} | {raw:.1f} | {native:.1f} | {(native / raw - 1) * 100:+.0f} % | {as_float:.1f} "
        f"| {(as_float / raw - 1) * 100:+.0f} % |"
    )


# --------------------------------------------------------------------------------------------------------- export
def bench_export(args: argparse.Namespace) -> None:
    """Eager Vivim (torch and cpu-kernel scan backends) versus its exports, all timed interleaved in one run."""
    import tempfile

    from vivim_monai.export import FORMATS, export_network, load_exported

    formats = [f for f in args.formats if f != "onnx" or _has_onnxruntime()]
    skipped = sorted(set(args.formats) - set(formats))
    x = torch.randn(1, 3, args.size, args.size, args.frames)
    print(f"### Exported Vivim on CPU, 1 x 3 x {args.size} x {args.size} x {args.frames} clip, fp32\n")
    if skipped:
        print(f"Not run: {', '.join(skipped)} (onnxruntime is not importable).\n")
    print(
        "| variant | runtime | export (s) | file (MB) | latency (s) | clip frames/s | vs eager torch | max abs diff |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant in args.variants:
        torch.manual_seed(0)
        eager = {"eager, torch scan": Vivim(variant, scan_backend="torch").eval()}
        if "cpu" in available_backends("cpu"):
            eager["eager, cpu kernel"] = Vivim(variant, scan_backend="cpu").eval()
            eager["eager, cpu kernel"].load_state_dict(eager["eager, torch scan"].state_dict())
        runners: dict[str, Callable[[torch.Tensor], torch.Tensor]] = dict(eager)
        facts: dict[str, tuple[str, str]] = {name: ("-", "-") for name in eager}
        with tempfile.TemporaryDirectory() as folder:
            for fmt in formats:
                with DeviceTimer() as timer:
                    path = export_network(eager["eager, torch scan"], x, os.path.join(folder, "model" + FORMATS[fmt]))
                seconds = timer.seconds
                name = {"torchscript": "TorchScript (trace)", "program": "torch.export .pt2", "onnx": "ONNX Runtime"}
                runners[name[fmt]] = load_exported(path, threads=args.threads)
                facts[name[fmt]] = (f"{seconds:.0f}", f"{os.path.getsize(path) / 2**20:.1f}")
                print(f"{variant} {fmt}: exported in {seconds:.0f} s", file=sys.stderr, flush=True)
            with torch.inference_mode():
                reference = eager["eager, torch scan"](x)
                diffs = {name: float((run(x) - reference).abs().max()) for name, run in runners.items()}
                for run in runners.values():
                    run(x)  # a second warm-up: TorchScript's profiling executor optimises on its second call
                calls = [lambda run=run: run(x) for run in runners.values()]
                times = _interleaved_medians(calls, args.repeats)
        base = times[0]
        for (name, (export_s, size)), median in zip(facts.items(), times):
            print(
                f"| {variant} | {name} | {export_s} | {size} | {median:.3f} | {args.frames / median:.2f} | "
                f"{base / median:.2f}x | {diffs[name]:.1e} |",
                flush=True,
            )
    print()


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# ------------------------------------------------------------------------------------------------------ fewshot
def bench_fewshot(args: argparse.Namespace) -> None:
    """Time to a whole-cine result from one box (tracking, box -> adaptation, both) and from one labelled frame, on
    a synthetic ``frames``-frame ``size``² cine (a dark ellipse drifting through speckle), outputs written."""
    import tempfile

    from vivim_monai.fewshot import UNLABELLED, AdaptConfig, BoxPrompt, box_of_mask
    from vivim_monai.fewshot.segment import segment_with_prompts
    from vivim_monai.io import write_case_outputs

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[: args.size, : args.size]
    cine = np.empty((1, args.size, args.size, args.frames), np.uint8)
    truth = np.empty((args.size, args.size, args.frames), np.uint8)
    speckle = rng.gamma(2.0, 30.0, (args.size, args.size))  # tissue speckle persists between frames, as in a cine
    for t in range(args.frames):
        centre = args.size * (0.4 + 0.2 * np.sin(2 * np.pi * t / args.frames))
        inside = ((rows - centre) / (0.12 * args.size)) ** 2 + ((cols - args.size / 2) / (0.18 * args.size)) ** 2 < 1
        truth[..., t] = inside
        frame = (0.9 * speckle + 0.1 * rng.gamma(2.0, 30.0, inside.shape)) * np.where(inside, 0.25, 1.0)
        cine[0, ..., t] = np.clip(frame, 0, 255)
    cine_t = torch.from_numpy(cine)
    frame = args.frames // 2
    box = [BoxPrompt(frame, box_of_mask(truth[..., frame]))]
    label = np.full_like(truth, UNLABELLED)
    label[..., frame] = truth[..., frame]
    config = AdaptConfig(**({"steps": args.steps} if args.steps else {}))
    print(f"Few-shot: {args.frames} frames of {args.size}², recipe {config}")
    print("| path | total s | parts (s) |\n|---|---|---|")
    for name, kwargs in (
        ("one box, tracking", {"boxes": box, "method": "track"}),
        ("one labelled frame, adaptation", {"label": label, "method": "adapt"}),
        ("one box -> adaptation", {"boxes": box, "method": "adapt"}),
        ("one box -> tracking + adaptation", {"boxes": box, "method": "track+adapt"}),
    ):
        start = time.perf_counter()
        result = segment_with_prompts(cine_t, config=config, **kwargs)
        writing = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            write_case_outputs(cine_t, result.labels, folder, case_id="bench", class_names=["background", "target"])
        end = time.perf_counter()
        parts = {**{k: v for k, v in result.seconds.items() if k != "total"}, "writing outputs": end - writing}
        detail = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        lost = f", {len(result.lost)} frames lost" if result.lost else ""
        print(f"| {name} | {end - start:.1f} | {detail}{lost} |", flush=True)


# -------------------------------------------------------------------------------------------------- postprocess
def bench_postprocess(args: argparse.Namespace) -> None:
    """Per-case evaluation work outside the network on one full-resolution cine: class indices from the inverted
    scores (MONAI's ``AsDiscreted(argmax=True)`` vs ``ClassIndicesd``), per-frame pixel counts (MONAI's
    ``get_confusion_matrix`` on one-hot frames vs ``frame_confusion`` on one-byte index frames), and the whole
    per-case scoring of ``EvaluationReport`` (overlap, HD95, confusion, temporal), timed interleaved."""
    from monai.metrics import get_confusion_matrix
    from monai.transforms import AsDiscreted

    from vivim_monai.metrics import confusion_matrix, frame_confusion, per_frame_metrics, temporal_consistency
    from vivim_monai.metrics.frames import video_pair
    from vivim_monai.transforms import ClassIndicesd

    h, w, t = args.height, args.width, args.frames
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    discs = [((rows - h / 2 - f) ** 2 + (cols - w / 2) ** 2 < (h / 6) ** 2) for f in range(t)]
    label = torch.stack(discs, -1)[None].float()
    scores = torch.cat([1 - label, label]) * 0.6 + 0.4 * torch.rand(
        2, h, w, t, generator=torch.Generator().manual_seed(0)
    )
    pred = AsDiscreted("pred", argmax=True)({"pred": scores})["pred"]
    p, y, k = video_pair(pred, label, 2)
    one_hot_frames = [torch.stack([x == c for c in range(k)], 1).float() for x in (p, y)]

    def report_case() -> None:
        per_frame_metrics(pred, label, k)
        confusion_matrix(pred, label, k)
        temporal_consistency(pred, label, k)

    times = _interleaved_medians(
        [
            lambda: AsDiscreted("pred", argmax=True)({"pred": scores}),
            lambda: ClassIndicesd("pred")({"pred": scores}),
            lambda: get_confusion_matrix(*one_hot_frames, include_background=True),
            lambda: frame_confusion(p, y, k),
            report_case,
        ],
        args.repeats,
    )
    print(f"Evaluation outside the network: one {h} x {w} x {t} two-class cine, median of {args.repeats}")
    print("| step | MONAI (s) | vivim-monai (s) | ratio |\n|---|---|---|---|")
    print(f"| class indices of (2, H, W, T) scores | {times[0]:.3f} | {times[1]:.3f} | {times[0] / times[1]:.1f}x |")
    print(f"| per-frame pixel counts | {times[2]:.3f} | {times[3]:.3f} | {times[2] / times[3]:.1f}x |")
    print(f"| EvaluationReport's scoring of the case (HD95 included) | | {times[4]:.3f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads (default: torch's)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("scan", help="selective scan implementations at Vivim's four stage sizes")
    forward = sub.add_parser("forward", help="inference latency per variant and backend")
    memory = sub.add_parser("memory", help="peak inference memory versus clip length")
    everything = sub.add_parser("all", help="scan, forward and memory")
    for p in (forward, everything):
        p.add_argument("--variants", nargs="+", default=["lite0", "b0", "b3"])
        p.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
        p.add_argument("--frames", type=int, default=5)
        p.add_argument("--size", type=int, default=256)
    for p in (memory, everything):
        p.add_argument("--variant", default="b0")
        p.add_argument("--lengths", nargs="+", type=int, default=[8, 16, 32, 64])
        p.add_argument("--memory-size", dest="size_memory", type=int, default=256)
        p.add_argument("--attention-budget-gb", type=float, default=12.0)
    arms = sub.add_parser("arms", help="the comparison's networks, built from their config overlays")
    arms.add_argument(
        "--overlays",
        nargs="+",
        default=[
            os.path.join(os.path.dirname(__file__), "..", "configs", f"{name}.json")
            for name in (
                "vivim_b0",
                "vivim_lite0",
                "vivim_lite0_spatial_only",
                "flexunet_lite0",
                "flexunet_lite0_st_mamba",
            )
            + ("per_frame_unet_small", "vivim_tiny")
        ],
    )
    arms.add_argument("--frames", type=int, default=5)
    arms.add_argument("--size", type=int, default=256)
    decode = sub.add_parser("decode", help="DICOM decoding: load_cine versus raw pydicom")
    decode.add_argument(
        "--folder", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dicom-cine")
    )
    export = sub.add_parser("export", help="exported Vivim (TorchScript, torch.export, ONNX) vs eager, CPU")
    export.add_argument("--variants", nargs="+", default=["tiny", "b0"])
    export.add_argument("--formats", nargs="+", default=["torchscript", "program", "onnx"])
    export.add_argument("--frames", type=int, default=5)
    export.add_argument("--size", type=int, default=256)
    fewshot = sub.add_parser("fewshot", help="time to a whole-cine result from one box or one labelled frame")
    fewshot.add_argument("--frames", type=int, default=100)
    fewshot.add_argument("--size", type=int, default=256)
    fewshot.add_argument("--steps", type=int, help="adaptation steps (default: the shipped recipe's)")
    postprocess = sub.add_parser("postprocess", help="evaluation outside the network: argmax and metrics, per case")
    postprocess.add_argument("--height", type=int, default=749)
    postprocess.add_argument("--width", type=int, default=709)
    postprocess.add_argument("--frames", type=int, default=40)
    train = sub.add_parser("train", help="training frames/s: monai.bundle train workflow vs a plain PyTorch loop")
    train.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "bagls"))
    train.add_argument("--layout", default="bagls")
    train.add_argument("--cases", type=int, default=4)
    train.add_argument(
        "--dataset-config", default=os.path.join(os.path.dirname(__file__), "..", "configs", "bagls.json")
    )
    train.add_argument(
        "--overlay", default=os.path.join(os.path.dirname(__file__), "..", "configs", "flexunet_lite0_frames.json")
    )
    train.add_argument("--warmup", type=int, default=3, help="iterations left out of the bundle's rate")
    layout = sub.add_parser("layout", help="a per-frame network: channels-last against contiguous, train and infer")
    layout.add_argument(
        "--overlay", default=os.path.join(os.path.dirname(__file__), "..", "configs", "flexunet_lite0_frames.json")
    )
    layout.add_argument("--batch", type=int, default=8)
    layout.add_argument("--size", type=int, default=224)
    isa = sub.add_parser("isa", help="the CPU scan built per instruction set: exp bound and mambapy's pscan")
    isa.add_argument("--marches", nargs="+", default=["native", "x86-64-v3"], help="VIVIM_SCAN_MARCH values")
    sub.add_parser("isa-worker")
    worker = sub.add_parser("memory-worker")
    worker.add_argument("--variant", default="b0")
    worker.add_argument("--mixer", choices=["mamba", "attention"], default="mamba")
    worker.add_argument("--frames", type=int, default=8)
    worker.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = {"memory-worker": memory_worker, "isa-worker": isa_worker}
    if args.command not in workers:
        print(f"Machine: {machine_description()}\n")

    def memory(args: argparse.Namespace) -> None:
        args.size = args.size_memory
        bench_memory(args)

    commands: dict[str, list[Callable[[argparse.Namespace], None]]] = {
        "scan": [bench_scan],
        "forward": [bench_forward],
        "memory": [memory],
        "all": [bench_scan, bench_forward, memory],
        "arms": [bench_arms],
        "decode": [bench_decode],
        "export": [bench_export],
        "fewshot": [bench_fewshot],
        "postprocess": [bench_postprocess],
        "train": [bench_train],
        "layout": [bench_layout],
        "isa": [bench_isa],
        **{name: [worker] for name, worker in workers.items()},
    }
    for command in commands[args.command]:
        command(args)


if __name__ == "__main__":
    main()

"""Benchmarks of vivim-monai; prints Markdown tables whose numbers go into the docs (never into tests).

    python scripts/benchmark.py forward [--variants tiny b0 b3] [--backends cpu torch] [--frames 5] [--size 256]

``forward``: CPU (or CUDA) inference latency of one clip (B=1, 3 x size x size x frames) per Vivim variant and scan
backend, with the same network without ST-Mamba layers (``mamba_depths = 0``) as the spatial-only reference. All
rows of one run are measured side by side on the same machine, so their ratios are comparable.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from vivim_monai.networks import Vivim
from vivim_monai.ops import available_backends


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads){gpu}"


def time_call(fn, repeats: int, device: torch.device) -> tuple[float, float]:
    """(median, min) seconds over ``repeats`` calls after one warm-up, synchronising CUDA around each call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def bench_forward(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    backends = args.backends or available_backends(device)
    x = torch.randn(1, 3, args.size, args.size, args.frames, device=device)
    print(f"Machine: {machine_description()}")
    print(
        f"Clip: 1 x 3 x {args.size} x {args.size} x {args.frames} frames, float32, inference mode, "
        f"median of {args.repeats} runs after a warm-up\n"
    )
    print("| variant | params (M) | scan backend | latency (s) | frames/s | vs spatial-only |")
    print("|---|---|---|---|---|---|")
    for variant in args.variants:
        torch.manual_seed(0)
        spatial = Vivim(variant, mamba_depths=(0, 0, 0, 0)).to(device).eval()
        with torch.inference_mode():
            base, _ = time_call(lambda: spatial(x), args.repeats, device)
        params = sum(p.numel() for p in spatial.parameters()) / 1e6
        print(f"| {variant} spatial-only | {params:.2f} | - | {base:.3f} | {args.frames / base:.2f} | 1.00x |")
        for backend in backends:
            torch.manual_seed(0)
            net = Vivim(variant, scan_backend=backend).to(device).eval()
            with torch.inference_mode():
                median, _ = time_call(lambda: net(x), args.repeats, device)
            params = sum(p.numel() for p in net.parameters()) / 1e6
            print(
                f"| {variant} | {params:.2f} | {backend} | {median:.3f} | {args.frames / median:.2f} | "
                f"{median / base:.2f}x |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    forward = sub.add_parser("forward", help="inference latency per variant and backend")
    forward.add_argument("--variants", nargs="+", default=["tiny", "b0", "b3"])
    forward.add_argument("--backends", nargs="+", default=None, help="default: every backend available here")
    forward.add_argument("--frames", type=int, default=5)
    forward.add_argument("--size", type=int, default=256)
    forward.add_argument("--repeats", type=int, default=3)
    forward.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    forward.set_defaults(func=bench_forward)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()

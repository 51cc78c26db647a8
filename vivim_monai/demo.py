"""Main job on the embedded default: Vivim over the real echo cine that ships inside pydicom.

``python -m vivim_monai.demo`` reads ``pydicom.examples.ybr_color`` (30-frame ultrasound, JPEG Baseline YBR),
normalises it, builds a randomly initialised Vivim and segments every frame with a sliding clip window along
time, then prints the shapes, timings and the selective-scan backend that ran. Weights are random (no released
weights exist and nothing is downloaded), so the class map itself is meaningless; shapes, speed and the data
path are what this checks.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from monai.inferers import SlidingWindowInferer
from monai.transforms import NormalizeIntensity, Resize
from pydicom import examples

from vivim_monai.data import load_cine
from vivim_monai.networks import VIVIM_VARIANTS, Vivim
from vivim_monai.ops import BACKENDS, ENV_VAR, resolve_backend

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vivim_monai.demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--file",
        default=None,
        help="cine to read: DICOM, NIfTI/MHA/NRRD or a frame folder " "(default: pydicom's ybr_color example)",
    )
    parser.add_argument("--variant", default="b0", choices=sorted(VIVIM_VARIANTS), help="Vivim variant")
    parser.add_argument("--classes", type=int, default=3, help="output classes (e.g. background/solid/non-solid)")
    parser.add_argument("--size", type=int, default=256, help="frames are resized to size x size (multiple of 32)")
    parser.add_argument("--clip-length", type=int, default=5, help="frames per clip window along time")
    parser.add_argument("--overlap", type=float, default=0.0, help="overlap of consecutive clip windows, [0, 1)")
    parser.add_argument("--backend", default=None, choices=BACKENDS + ("auto",), help=f"scan backend ({ENV_VAR})")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    path = args.file or str(examples.get_path("ybr_color"))
    cine = load_cine(path)
    channels, height, width, frames = cine.shape
    print(
        f"cine      {os.path.basename(path)}: {frames} frames of {height}x{width}, {channels} channel(s), "
        f"frame time {cine.meta['frame_time_ms']:.3f} ms ({cine.meta['frame_time_source']})"
    )

    image = Resize(spatial_size=(args.size, args.size, -1), mode="bilinear")(cine / max(float(cine.max()), 1.0))
    if channels == 3:
        image = NormalizeIntensity(subtrahend=IMAGENET_MEAN, divisor=IMAGENET_STD, channel_wise=True)(image)
    clip = torch.as_tensor(image).unsqueeze(0)
    print(f"input     {tuple(clip.shape)}  (B, C, H, W, T)")

    network = Vivim(args.variant, in_channels=channels, out_channels=args.classes, scan_backend=args.backend).eval()
    backend = resolve_backend(args.backend, clip.device)
    parameters = sum(p.numel() for p in network.parameters())
    print(
        f"network   Vivim({args.variant!r}) {parameters / 1e6:.2f} M parameters, scan backend '{backend}', "
        f"{torch.get_num_threads()} CPU threads"
    )

    window = min(args.clip_length, frames)
    inferer = SlidingWindowInferer(roi_size=(-1, -1, window), sw_batch_size=1, overlap=args.overlap)
    with torch.inference_mode():
        start = time.perf_counter()
        logits = inferer(clip, network)
        seconds = time.perf_counter() - start
    labels = logits.argmax(dim=1)
    fractions = [round(float((labels == k).float().mean()), 3) for k in range(args.classes)]
    print(f"output    {tuple(logits.shape)} logits (B, K, H, W, T); class fractions {fractions} (random weights)")
    print(f"timing    {seconds:.2f} s for {frames} frames in clips of {window}: {frames / seconds:.2f} frames/s")
    return {
        "input_shape": tuple(clip.shape),
        "output_shape": tuple(logits.shape),
        "backend": backend,
        "seconds": seconds,
    }


if __name__ == "__main__":
    main()

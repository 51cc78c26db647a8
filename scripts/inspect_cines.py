"""Print what vivim-monai reads from each cine of a folder: shape, frame rate, spacing, fan masks and their agreement.

    python scripts/inspect_cines.py ../shared/data/dicom-cine

Columns: shape (C, H, W, T); frames per second and where the frame time came from; pixel spacing (mm) and its
source; the fan methods available (DICOM ultrasound regions, estimation from the cine); IoU between the estimated fan
and the region rectangle; the fraction of the estimated fan that lies inside the region (the estimate should sit
inside the rectangle of the sector, which also holds the corners outside the fan).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vivim_monai.data import CineReadError, load_cine
from vivim_monai.transforms import estimate_fan_mask, fan_mask_from_regions, mask_iou


def describe(path: Path) -> str:
    try:
        cine = load_cine(path)
    except CineReadError as err:
        return f"| {path.name} | unreadable: {err} | | | | | |"
    meta = cine.meta
    fps = 1000.0 / meta["frame_time_ms"]
    spacing = meta.get("pixel_spacing_mm")
    spacing_text = f"{spacing[0]:.3f} x {spacing[1]:.3f} ({meta['pixel_spacing_source']})" if spacing else "unknown"
    estimated = estimate_fan_mask(cine)
    region = fan_mask_from_regions(meta.get("ultrasound_regions") or [], cine.shape[1], cine.shape[2])
    if region is None:
        agreement = "no usable region"
    else:
        inside = (estimated & region).sum() / max(int(estimated.sum()), 1)
        agreement = f"IoU {mask_iou(estimated, region):.2f}, {inside:.1%} of estimate inside region"
    return (
        f"| {path.name} | {tuple(cine.shape)} | {fps:.1f} ({meta['frame_time_source']}) | {spacing_text} "
        f"| {'regions, estimated' if region is not None else 'estimated'} | {estimated.mean():.1%} | {agreement} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--pattern", default="*.dcm")
    args = parser.parse_args(argv)
    files = sorted(Path(args.folder).glob(args.pattern))
    if not files:
        print(f"{args.folder}: no files matching {args.pattern}", file=sys.stderr)
        return 2
    print("| file | shape (C, H, W, T) | fps (source) | spacing mm (source) | fan methods | fan area | agreement |")
    print("|---|---|---|---|---|---|---|")
    for path in files:
        print(describe(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())

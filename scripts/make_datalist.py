"""Write a MONAI-style JSON datalist (one entry per case/video) for a dataset folder layout.

    python scripts/make_datalist.py ../shared/data/carotid-us --layout carotid --output datalists/carotid.json
    python scripts/make_datalist.py ../shared/data/bagls --layout bagls --output datalists/bagls.json
    python scripts/make_datalist.py raw_dataset/train --layout ovarian --metadata cases.csv --output ovarian.json
    python scripts/make_datalist.py phantom/ --layout dicom --output phantom.json
    python scripts/make_datalist.py ../shared/data/vtus --layout vtus --output datalists/vtus.json

Layouts and entry keys: see ``vivim_monai.data.datalist``. Paths in the file are relative to its ``root``, which is
stored relative to the datalist file; bundle configs may override it with ``dataset_dir``.
"""

from __future__ import annotations

import argparse
import sys

from vivim_monai.data import CineReadError
from vivim_monai.data.datalist import LAYOUT_CLASSES, LAYOUTS, discover_cases, write_datalist


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="dataset folder")
    parser.add_argument("--layout", required=True, choices=LAYOUTS)
    parser.add_argument("--output", required=True, help="datalist JSON to write (atomically)")
    parser.add_argument("--metadata", help="ovarian layout: CSV with a clinical_case column and case attributes")
    parser.add_argument("--classes", nargs="+", help="class names, background first (default: per layout)")
    parser.add_argument("--name", default="", help="dataset name (default: the folder name)")
    parser.add_argument("--no-scan-labels", action="store_true", help="skip reading labels (no class_frames)")
    args = parser.parse_args(argv)
    classes = tuple(args.classes or LAYOUT_CLASSES[args.layout])
    try:
        entries = discover_cases(args.root, args.layout, args.metadata, not args.no_scan_labels, classes)
    except (CineReadError, ValueError, OSError) as err:
        print(f"make_datalist: {err}", file=sys.stderr)
        return 2
    write_datalist(args.output, entries, args.root, args.layout, classes, name=args.name)
    frames = sum(e.get("n_frames", 0) for e in entries)
    print(f"{args.output}: {len(entries)} entries, {frames} frames, {len({e['group'] for e in entries})} groups")
    return 0


if __name__ == "__main__":
    sys.exit(main())

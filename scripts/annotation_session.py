"""A scripted annotation session with the interactive model of a running MONAI Label server (issue: annotation loop).

    python scripts/serve_monailabel.py start --bundle dist/vivim_cine_segmentation --studies studies
    python scripts/annotation_session.py --dataset vtus --case 0 [--rounds 3] [--output session.json]
    python scripts/annotation_session.py --cine cine.nii.gz --truth truth.nii.gz

Round 1 boxes the frame with the largest ground-truth mask; each later round saves the ground-truth label of the
frame the current result gets most wrong through the datastore and asks again (vivim_monai.experiments.
annotation_session). Prints Dice and seconds per round; ``--output`` keeps the records as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from vivim_monai.data import discover_cases, load_cine, load_label_cine
from vivim_monai.experiments.annotation_session import run_session
from vivim_monai.utils import atomic_write

#: dataset folder under --data -> its layout for discover_cases
LAYOUTS = {"vtus": "vtus", "carotid-us": "carotid"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8123")
    parser.add_argument("--model", default="vivim_cine_segmentation_interactive")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--dataset", choices=list(LAYOUTS), help="a developer cine from --data")
    parser.add_argument("--case", type=int, default=0, help="index of the cine in --dataset")
    parser.add_argument("--cine", type=Path, help="a cine file (instead of --dataset)")
    parser.add_argument("--truth", type=Path, help="its ground-truth label (H x W x T, foreground > 0)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="JSON file for the round records")
    args = parser.parse_args(argv)
    if args.dataset:
        entry = discover_cases(Path(args.data) / args.dataset, layout=LAYOUTS[args.dataset])[args.case]
        root = Path(args.data) / args.dataset
        images, labels = [root / p for p in entry["image"]], [root / p for p in entry["label"]]
        name = entry["case_id"].replace("/", "_")
    elif args.cine and args.truth:
        images, labels, name = args.cine, args.truth, args.cine.name.split(".")[0]
    else:
        parser.error("give --dataset (with --case) or --cine and --truth")
    cine = load_cine(images).numpy()
    grey = cine.mean(0) if cine.shape[0] > 1 else cine[0]  # ultrasound: one grey channel is uploaded
    truth = load_label_cine(labels, "binary").numpy()[0]
    records = run_session(args.url, args.model, np.round(grey).astype(np.uint8), truth, name, args.rounds)
    for record in records:
        seconds = record["seconds"]
        print(
            f"{name} round {record['round']}: Dice {record['dice']:.3f}, {seconds['round']:.0f} s "
            f"(upload/save {seconds['upload']:.1f}, inference {seconds['inference']:.1f}); "
            f"server {record['server']['latencies']}; next correction: frame {record['worst_frame']}",
            flush=True,
        )
    if args.output:
        text = json.dumps({"cine": name, "rounds": records}, indent=1)
        atomic_write(args.output, lambda path: Path(path).write_text(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Few-shot and box-prompt evaluation on the developer cines (the model card's *Your own cine* tables).

    python scripts/evaluate_fewshot.py --data ../shared/data --output runs/fewshot
    python scripts/evaluate_fewshot.py --data ../shared/data --output runs/fewshot --report-only

Each (cine, method) result is a JSON file under ``<output>/<dataset>/<case>/``; a killed run resumes where it
stopped. ``--report-only`` rebuilds ``<output>/report.md`` from those files. Protocol: vivim_monai.fewshot.evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from vivim_monai.data import discover_cases, load_cine, load_label_cine
from vivim_monai.fewshot.evaluation import (
    EVALUATED_METHODS,
    auto_records,
    evaluate_case,
    per_cine_markdown,
    report_markdown,
)
from vivim_monai.networks import LiteMedSAM
from vivim_monai.utils import atomic_write

#: dataset folder -> (layout, frames in time order)
DATASETS = {"vtus": ("vtus", True), "carotid-us": ("carotid", True), "bagls": ("bagls", False)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding vtus/, carotid-us/, bagls/")
    parser.add_argument("--output", default="runs/fewshot")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--methods", nargs="+", default=list(EVALUATED_METHODS), choices=list(EVALUATED_METHODS))
    parser.add_argument("--cases", type=int, help="only the first N cines of each dataset")
    parser.add_argument("--shard", help="K/N: only every N-th cine from the K-th (0-based), to run N processes at once")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    output = Path(args.output)
    medsam = None if args.report_only else LiteMedSAM().eval()
    records = {}
    for name in args.datasets:
        layout, temporal = DATASETS[name]
        root = Path(args.data) / name
        if not root.is_dir():
            print(f"skipping {name}: no folder {root}", file=sys.stderr)
            continue
        entries = discover_cases(root, layout=layout)[: args.cases]
        if args.shard and not args.report_only:
            index, count = (int(v) for v in args.shard.split("/"))
            entries = entries[index::count]
        found = []
        for entry in entries:
            if args.report_only:
                folder = output / name / entry["case_id"].replace("/", "_")
                done = [json.loads(p.read_text()) for p in folder.glob("*.json")]
                found += sorted(done, key=lambda r: EVALUATED_METHODS.index(r["method"]))
                continue
            cine = load_cine([root / p for p in entry["image"]])
            truth = load_label_cine([root / p for p in entry["label"]], entry.get("label_format", "binary"))
            found += evaluate_case(
                entry["case_id"], cine, truth.numpy()[0], output / name, args.methods, temporal, medsam=medsam
            )
        records[name] = found + auto_records(found)
    report = report_markdown(records)
    for name, found in records.items():
        if found:
            report += f"\n### {name}: Dice per cine\n\n" + per_cine_markdown(found)
    atomic_write(output / "report.md", lambda path: Path(path).write_text(report))
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Compare Vivim with the per-frame baseline and the spatial-only ablation on one dataset, end to end.

    python scripts/compare_models.py ../shared/data/carotid-us --layout carotid --dataset-config configs/carotid.json \\
        --output runs/compare/carotid --folds 4
    python scripts/compare_models.py ../shared/data/bagls --layout bagls --attribute camera \\
        --dataset-config configs/bagls.json --output runs/compare/bagls --folds 4
    python scripts/compare_models.py ../shared/data/vtus --layout vtus --dataset-config <VTUS overlay>.json \\
        --output runs/compare/vtus --temporal-blocks 3 --guard 3

Steps: the datalist and its stratified group folds (``<output>/datalist_folds.json``; with ``--temporal-blocks N``
instead every video cut into N contiguous blocks, block k validating fold k and the ``--guard`` frames next to it
never training: for one or few videos such as VTUS); for every model overlay (default ``configs/vivim_tiny.json``,
``configs/vivim_tiny_spatial_only.json``, ``configs/per_frame_unet_small.json``) the same k-fold cross-validation
through the bundle (``scripts/cross_validate.py``: same data, augmentation, epochs); then the comparison report
(``vivim_monai.experiments``): tables per fold and mean ± sd, training curves and example overlays as PNG, in
``<output>/report``. A model whose ``cv_summary.csv`` exists is not re-run (``--rerun`` forces it);
``--report-only`` just rebuilds the report. Nothing here is specific to one dataset.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from vivim_monai.data import (
    LAYOUT_CLASSES,
    LAYOUTS,
    assign_folds,
    assign_temporal_blocks,
    discover_cases,
    temporal_block_report,
    write_datalist,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("vivim_tiny", "vivim_tiny_spatial_only", "per_frame_unet_small")


def make_folded_datalist(
    data: Path,
    layout: str,
    output: Path,
    folds: int,
    attribute: str | None,
    temporal_blocks: int | None = None,
    guard: int = 3,
) -> Path:
    """``<output>/datalist_folds.json`` (kept if present): stratified group folds, or ``temporal_blocks`` blocks per
    video with a ``guard`` of frames (then ``folds`` and ``attribute`` are unused)."""
    path = output / "datalist_folds.json"
    if path.is_file():
        return path
    entries = discover_cases(data, layout)
    if temporal_blocks is not None:
        entries = assign_temporal_blocks(entries, temporal_blocks, guard)
        report = temporal_block_report(entries)
    else:
        fold_of_entry, report = assign_folds(entries, folds, attribute=attribute)
        entries = [{**entry, "fold": fold} for entry, fold in zip(entries, fold_of_entry)]
    write_datalist(path, entries, data, layout, LAYOUT_CLASSES[layout], folds=report)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="dataset folder")
    parser.add_argument("--layout", required=True, choices=LAYOUTS)
    parser.add_argument("--dataset-config", required=True, help="dataset overlay, e.g. configs/carotid.json")
    parser.add_argument("--output", required=True)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--attribute", help="stratification attribute (e.g. camera)")
    parser.add_argument("--temporal-blocks", type=int, metavar="N", help="folds = N contiguous blocks of every video")
    parser.add_argument(
        "--guard", type=int, default=3, help="temporal blocks: frames by the validation block not trained"
    )
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="network overlays in configs/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override for all")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    datalist = make_folded_datalist(
        Path(args.data).resolve(), args.layout, output, args.folds, args.attribute, args.temporal_blocks, args.guard
    )
    for model in [] if args.report_only else args.models:
        run = output / model
        if (run / "cv_summary.csv").is_file() and not args.rerun:
            print(f"{model}: already cross-validated in {run}")
            continue
        command = [sys.executable, str(REPO / "scripts" / "cross_validate.py"), str(datalist), "--output", str(run)]
        command += [
            "--config",
            str(Path(args.dataset_config).resolve()),
            "--config",
            str(REPO / "configs" / f"{model}.json"),
        ]
        for override in args.set:
            command += ["--set", override]
        subprocess.run(command, check=True)
    from vivim_monai.experiments import write_comparison

    report = write_comparison(output, args.models, dataset_config=Path(args.dataset_config).resolve())
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

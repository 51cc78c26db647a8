"""Compare Vivim with and without time and with per-frame networks on one dataset, end to end.

    python scripts/compare_models.py ../shared/data/carotid-us --layout carotid --dataset-config configs/carotid.json \\
        --output runs/compare/carotid --folds 4
    python scripts/compare_models.py ../shared/data/bagls --layout bagls --attribute camera \\
        --dataset-config configs/bagls.json --output runs/compare/bagls --folds 3
    python scripts/compare_models.py ../shared/data/vtus --layout vtus --dataset-config configs/vtus.json \\
        --output runs/compare/vtus --temporal-blocks 3 --guard 3

Steps: the datalist and its stratified group folds (``<output>/datalist_folds.json``; with ``--temporal-blocks N``
instead every video cut into N contiguous blocks, block k validating fold k and the ``--guard`` frames next to it
never training: for one or few videos such as VTUS); for every model overlay (default :data:`DEFAULT_MODELS`: Vivim
on pretrained EfficientNet-Lite0, the same network without its ST-Mamba layers, MONAI's FlexibleUNet on the same
encoder, the same with ST-Mamba on its skip features, and the from-scratch per-frame UNet and Vivim-tiny) the same
k-fold cross-validation through the bundle (``scripts/cross_validate.py``: same data, augmentation, epochs); then the
comparison report (``vivim_monai.experiments``): tables per fold and mean ± sd, paired differences, the per-case
tables of the with-time / without-time pairs, training curves and example overlays as PNG, in ``<output>/report``. A
model with every fold evaluated is not re-run, finished folds are kept and a killed fold resumes at its last finished
epoch (``--rerun`` repeats them afresh; ``--reevaluate`` evaluates the trained folds again under new overrides, e.g.
test-time flips, without training: run it on a copy of the output folder to keep the first evaluation);
``--final MODEL`` also retrains MODEL on every fold (``<output>/MODEL/final``, the weights to release);
``--report-only`` just rebuilds the report, also from an archive without checkpoints (``scripts/archive_results.py``;
its examples then say which checkpoints are missing); ``--jobs N`` trains N folds side by side (any models; each a
single-fold ``cross_validate.py`` run logging to ``<output>/logs``, the CPU threads shared), then tabulates each
model. Nothing here is specific to one dataset.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

from vivim_monai.data import (
    LAYOUT_CLASSES,
    LAYOUTS,
    assign_folds,
    assign_temporal_blocks,
    datalist_folds,
    discover_cases,
    temporal_block_report,
    write_datalist,
)

REPO = Path(__file__).resolve().parents[1]
#: The comparison arms: Vivim on pretrained EfficientNet-Lite0, the same network without time, MONAI's FlexibleUNet on
#: the same pretrained encoder (per frame) and with ST-Mamba on its skip features, and the from-scratch references
#: (per-frame UNet, Vivim-tiny); MediViSTA (``--models ... medivista``) is not among the defaults: its frozen encoder
#: alone costs seconds per frame on a CPU.
DEFAULT_MODELS = (
    "vivim_lite0",
    "vivim_lite0_spatial_only",
    "flexunet_lite0",
    "flexunet_lite0_st_mamba",
    "per_frame_unet_small",
    "vivim_tiny",
)
#: with time, without time: the same network and encoder, differing only in the ST-Mamba layers
DEFAULT_PAIRS = (("vivim_lite0", "vivim_lite0_spatial_only"), ("flexunet_lite0_st_mamba", "flexunet_lite0"))


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


def evaluated_folds(run: Path, folds: Sequence[int]) -> list[int]:
    """Those of ``folds`` whose evaluation ``run`` holds."""
    return [k for k in folds if (run / f"fold_{k}" / "eval" / "metrics_summary.json").is_file()]


def fully_evaluated(run: Path, folds: Sequence[int]) -> bool:
    """Whether every one of ``folds`` (a datalist's) has its evaluation in ``run``: a ``cv_summary.csv`` alone is not
    proof, since ``cross_validate.py --folds k`` (folds run side by side) writes one over the folds it has seen."""
    return bool(folds) and evaluated_folds(run, folds) == list(folds)


def cross_validate_command(
    datalist: Path,
    run: Path,
    configs: list[Path],
    overrides: list[str],
    folds: list[int] | None = None,
    final: bool = False,
    rerun: bool = False,
    reevaluate: bool = False,
) -> list[str]:
    """``scripts/cross_validate.py`` for one model: all folds (then it also tabulates them) or only ``folds``."""
    command = [sys.executable, str(REPO / "scripts" / "cross_validate.py"), str(datalist), "--output", str(run)]
    command += ["--folds", *map(str, folds)] if folds is not None else []
    command += ["--final"] if final else []
    command += ["--rerun"] if rerun else []
    command += ["--reevaluate"] if reevaluate else []
    for config in configs:
        command += ["--config", str(config)]
    for override in overrides:
        command += ["--set", override]
    return command


def run_folds_side_by_side(
    datalist: Path,
    output: Path,
    models: list[str],
    dataset_config: Path,
    overrides: list[str],
    jobs: int,
    rerun: bool,
    env: dict[str, str] | None = None,
    reevaluate: bool = False,
) -> list[str]:
    """Train and evaluate the unfinished folds of ``models`` as single-fold runs, ``jobs`` at a time, with the CPU
    threads shared between them (``OMP_NUM_THREADS`` unless set); each logs to ``<output>/logs/<model>_fold_<k>.log``.
    Returns the names of the failed runs (the others are kept)."""
    from vivim_monai.experiments.parallel import Job, run_jobs, threads_per_job

    todo, folds = [], datalist_folds(datalist)
    for model in models:
        run, configs = output / model, [dataset_config, REPO / "configs" / f"{model}.json"]
        done = [] if rerun or reevaluate else evaluated_folds(run, folds)
        for fold in (k for k in folds if k not in done):
            command = cross_validate_command(
                datalist, run, configs, overrides, folds=[fold], rerun=rerun, reevaluate=reevaluate
            )
            todo.append(Job(f"{model} fold {fold}", command, output / "logs" / f"{model}_fold_{fold}.log"))
    env = dict(os.environ if env is None else env)
    env.setdefault("OMP_NUM_THREADS", str(threads_per_job(jobs)))
    return [result.job.name for result in run_jobs(todo, jobs, env=env) if result.returncode != 0]


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
    parser.add_argument(
        "--pair",
        nargs=2,
        action="append",
        metavar=("WITH_TIME", "WITHOUT_TIME"),
        help="per-case paired table of two models (default: "
        + ", ".join(" vs ".join(pair) for pair in DEFAULT_PAIRS)
        + ", each when both run)",
    )
    parser.add_argument("--final", nargs="+", default=[], metavar="MODEL", help="also retrain these on every fold")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate every trained fold again under these overrides, without training (replaces the evaluation)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="train this many folds side by side (separate processes, CPU threads shared; logs in <output>/logs)",
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    output = Path(args.output).resolve()
    datalist = make_folded_datalist(
        Path(args.data).resolve(), args.layout, output, args.folds, args.attribute, args.temporal_blocks, args.guard
    )
    # MediViSTA's frozen-encoder outputs, shared by its folds and final run (content-addressed, so always valid)
    env = {"VIVIM_EMBEDDING_CACHE": str(output / "embedding_cache"), **os.environ}  # for the runs, not this process
    dataset_config = Path(args.dataset_config).resolve()
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if args.reevaluate and (args.rerun or args.final or args.report_only):
        parser.error("--reevaluate evaluates trained folds only: not with --rerun, --final or --report-only")
    if args.jobs > 1 and not args.report_only:
        failed = run_folds_side_by_side(
            datalist,
            output,
            args.models,
            dataset_config,
            args.set,
            args.jobs,
            args.rerun,
            env=env,
            reevaluate=args.reevaluate,
        )
        if failed:
            print(f"failed: {', '.join(failed)} (logs in {output / 'logs'}); no report", file=sys.stderr)
            return 1
    folds = [] if args.report_only else datalist_folds(datalist)
    for model in [] if args.report_only else args.models:
        run, configs = output / model, [dataset_config, REPO / "configs" / f"{model}.json"]
        final = model in args.final and not (run / "final" / "models" / "model.pt").is_file()
        if args.jobs == 1 and fully_evaluated(run, folds) and not (args.rerun or args.reevaluate or final):
            print(f"{model}: already cross-validated in {run}")
            continue
        rerun = args.rerun and args.jobs == 1  # side by side, the folds have just run: this tabulates (and --final)
        reevaluate = args.reevaluate and args.jobs == 1
        command = cross_validate_command(
            datalist, run, configs, args.set, final=final, rerun=rerun, reevaluate=reevaluate
        )
        subprocess.run(command, check=True, env=env)
    from vivim_monai.experiments import write_comparison

    pairs = [tuple(p) for p in args.pair] if args.pair else list(DEFAULT_PAIRS)
    report = write_comparison(output, args.models, dataset_config=dataset_config, case_pairs=pairs)
    print(report.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

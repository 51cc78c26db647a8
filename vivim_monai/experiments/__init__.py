"""Comparison reports of models cross-validated on one dataset (``scripts/compare_models.py``).

:func:`write_comparison` reads ``<output>/<model>/`` folders written by ``scripts/cross_validate.py`` (per fold
``eval/metrics_summary.json``, TensorBoard events and ``models/model.pt``; ``cv_timing.json``) and writes
``<output>/report/``: ``comparison.md`` and ``comparison.csv`` (mean ± sd over folds, per-fold values, the winner on
foreground Dice, paired per-fold differences), ``training_curves.png`` and ``examples.png``. Nothing in it is
specific to one dataset. :func:`archive_results` keeps the part of such a folder the report is built from (no
checkpoints) for the repository.
"""

from vivim_monai.experiments.archive import ARCHIVED_PATTERNS, ArchiveResult, archive_results
from vivim_monai.experiments.curves import FoldCurves, fold_curves, loss_per_epoch, read_scalars, write_training_curves
from vivim_monai.experiments.examples import frame_dice, predict_case, write_examples
from vivim_monai.experiments.prompted import joint_fold_results, joint_report, per_dataset_means
from vivim_monai.experiments.report import write_comparison
from vivim_monai.experiments.runs import (
    ModelRun,
    build_network,
    config_record,
    count_parameters,
    load_run,
    model_parser,
)
from vivim_monai.experiments.tables import (
    FoldStat,
    ModelStats,
    comparison_csv,
    comparison_markdown,
    model_stats,
    paired_difference,
    signed_text,
    winner_sentence,
)

__all__ = [
    "ARCHIVED_PATTERNS",
    "ArchiveResult",
    "FoldCurves",
    "FoldStat",
    "ModelRun",
    "ModelStats",
    "archive_results",
    "build_network",
    "comparison_csv",
    "comparison_markdown",
    "config_record",
    "count_parameters",
    "fold_curves",
    "frame_dice",
    "joint_fold_results",
    "joint_report",
    "load_run",
    "loss_per_epoch",
    "model_parser",
    "model_stats",
    "paired_difference",
    "per_dataset_means",
    "predict_case",
    "read_scalars",
    "signed_text",
    "winner_sentence",
    "write_comparison",
    "write_examples",
    "write_training_curves",
]

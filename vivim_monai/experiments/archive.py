"""Keep the small, reproducible part of a comparison run (metrics, timings, curves' events, the report) for good.

A cross-validation of six models takes hours on a CPU; its checkpoints are hundreds of megabytes, but everything the
comparison tables, paired differences and training curves are built from fits in a few hundred kilobytes. Archiving
that part into the repository (``docs/results/<dataset>``) lets a later session add a model and rebuild the report
(``scripts/compare_models.py --output <archive> --report-only``) without retraining the others; only the example
overlays need checkpoints, and the report says which are missing.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from vivim_monai.utils import atomic_write

__all__ = ["ARCHIVED_PATTERNS", "MAX_ARCHIVED_BYTES", "ArchiveResult", "archive_results"]

#: files copied, as glob patterns relative to the comparison's ``--output`` folder: the fold datalist, the report,
#: each model's timings and summaries, each fold's evaluation metrics and the TensorBoard events its curves come from
ARCHIVED_PATTERNS = (
    "datalist_folds.json",
    "report/comparison.md",
    "report/comparison.csv",
    "report/*.png",
    "*/cv_timing.json",
    "*/cv_summary.csv",
    "*/cv_summary.md",
    "*/fold_*/eval/metrics_summary.json",
    "*/fold_*/eval/metrics_per_video.csv",
    "*/fold_*/eval/metrics_per_frame.csv",
    "*/fold_*/eval/events.out.tfevents.*",
)
#: a single file above this is refused (a checkpoint or image volume matched by mistake must not reach git)
MAX_ARCHIVED_BYTES = 8 * 1024 * 1024


@dataclass
class ArchiveResult:
    """What :func:`archive_results` copied (destination paths) and what it refused, with the reason."""

    copied: list[Path] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.copied)


def archive_results(output: str | Path, destination: str | Path, models: list[str] | None = None) -> ArchiveResult:
    """Copy the files of :data:`ARCHIVED_PATTERNS` from ``output`` (a ``scripts/compare_models.py`` folder) to
    ``destination``, keeping relative paths; only the folders of ``models`` when given. Each file is written
    atomically; ``output`` is only read. Raises ``FileNotFoundError`` naming ``output`` when it holds no evaluated
    fold (nothing worth keeping)."""
    output, destination = Path(output).resolve(), Path(destination).resolve()
    if destination == output or output in destination.parents:
        raise ValueError(f"archive destination {destination} must lie outside the run folder {output}")
    if not any(output.glob("*/fold_*/eval/metrics_summary.json")):
        raise FileNotFoundError(f"{output}: no evaluated fold (<model>/fold_<k>/eval/metrics_summary.json) to archive")
    result = ArchiveResult()
    sources = sorted({path for pattern in ARCHIVED_PATTERNS for path in output.glob(pattern) if path.is_file()})
    for source in sources:
        relative = source.relative_to(output)
        in_model = len(relative.parts) > 1 and relative.parts[0] != "report"
        if models is not None and in_model and relative.parts[0] not in models:
            continue
        size = source.stat().st_size
        if size > MAX_ARCHIVED_BYTES:
            result.refused.append(f"{source}: {size} bytes, above the {MAX_ARCHIVED_BYTES}-byte limit")
            continue
        target = destination / relative
        atomic_write(target, lambda name, source=source: shutil.copyfile(source, name))
        result.copied.append(target)
    return result

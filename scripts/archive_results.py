"""Archive the small, reproducible part of a model comparison (metrics, timings, curves, report) for the repository.

    python scripts/archive_results.py runs/compare4/carotid docs/results/carotid_4fold
    python scripts/compare_models.py ../shared/data/carotid-us --layout carotid --dataset-config configs/carotid.json \\
        --output docs/results/carotid_4fold --folds 4 --models flexunet_lite0_st_mamba flexunet_lite0 --report-only

The first copies what ``vivim_monai.experiments.archive.ARCHIVED_PATTERNS`` lists (no checkpoints); the second
rebuilds the tables, paired differences and curves from the archive alone. Add a model later by copying the archive
back into a run folder, cross-validating the new model there, and archiving again.
"""

from __future__ import annotations

import argparse
import sys

from vivim_monai.experiments import archive_results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", help="the --output folder of scripts/compare_models.py")
    parser.add_argument("destination", help="archive folder, e.g. docs/results/<dataset>")
    parser.add_argument("--models", nargs="+", help="archive only these model folders (default: all)")
    args = parser.parse_args(argv)
    try:
        result = archive_results(args.output, args.destination, args.models)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"archive_results: {error}") from None
    for reason in result.refused:
        print(f"refused {reason}", file=sys.stderr)
    print(f"archived {len(result.copied)} files, {result.total_bytes / 1024:.0f} KiB, in {args.destination}")
    return 1 if result.refused else 0


if __name__ == "__main__":
    sys.exit(main())

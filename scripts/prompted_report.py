"""Per-dataset report of a jointly trained text-prompted model over its folds (metrics and prompt sensitivity).

    python scripts/prompted_report.py runs/prompted

Reads ``runs/prompted/fold_<k>/prompt_sensitivity/{own,other,empty}/metrics_per_frame.csv`` (written by
``scripts/prompt_sensitivity.py`` for each fold) and writes ``runs/prompted/report.md``: per dataset Dice, Jaccard and
HD95 with the right prompt and the Dice drops with another dataset's prompt and with an empty one, as mean ± sd over
folds and per fold (:func:`vivim_monai.experiments.joint_report`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vivim_monai.experiments import joint_report
from vivim_monai.utils import atomic_write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="cross-validation output of the joint model (fold_<k>/ folders)")
    parser.add_argument("--output", help="report file (default: <run>/report.md)")
    args = parser.parse_args(argv)
    markdown = joint_report(args.run)
    output = Path(args.output) if args.output else Path(args.run) / "report.md"
    atomic_write(output, lambda name: Path(name).write_text(markdown))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

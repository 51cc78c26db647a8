"""Assign stratified group k-fold indices (or temporal blocks) to a datalist and write it (entries gain ``"fold"``).

    python scripts/make_folds.py datalists/bagls.json --folds 5 --attribute camera --output datalists/bagls_folds.json
    python scripts/make_folds.py datalists/vtus.json --temporal-blocks 3 --guard 3 --output datalists/vtus_folds.json

Groups (``--group-key``, default ``group``: patient / case / acquisition) never straddle folds; strata join the
``--attribute`` value, frame-count and class-presence bins; the most balanced of ``--seeds`` wins (see
``vivim_monai.data.folds``). The report goes into the file (``"folds"``) and to stdout. Bundle configs train fold k
with ``fold=k`` (``load_datalist(..., fold=k, split="train"/"val")``) and a final model with ``fold=-1``.

``--temporal-blocks N`` instead cuts every video into N contiguous blocks (block k validates fold k; for one or few
videos, e.g. VTUS); fold k's training side then leaves out the ``--guard`` frames next to block k (see
``vivim_monai.data.folds.assign_temporal_blocks``). It excludes the k-fold options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vivim_monai.data.folds import assign_folds, assign_temporal_blocks, temporal_block_report
from vivim_monai.utils import atomic_write

DEFAULT_FOLDS, DEFAULT_GUARD = 5, 3
KFOLD_OPTIONS = ("n_folds", "group_key", "attribute", "seeds")  # assign_folds keywords; None = not given


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", help="datalist JSON from make_datalist.py (not modified)")
    parser.add_argument("--output", required=True, help="datalist with folds to write (atomically)")
    parser.add_argument(
        "--folds", dest="n_folds", type=int, help=f"stratified group k-fold: number of folds (default {DEFAULT_FOLDS})"
    )
    parser.add_argument("--group-key", help="k-fold: entry key of the groups kept in one fold (default group)")
    parser.add_argument("--attribute", help="k-fold: entry attribute to stratify on (e.g. histological, camera)")
    parser.add_argument("--seeds", type=int, nargs="+", help="k-fold: shuffling seeds tried (default 42..51)")
    parser.add_argument("--temporal-blocks", type=int, metavar="N", help="cut every video into N blocks = folds")
    parser.add_argument(
        "--guard",
        type=int,
        help=f"temporal blocks: frames by the validation block left out of training (default {DEFAULT_GUARD})",
    )
    parser.add_argument("--section", default="training")
    args = parser.parse_args(argv)
    kfold = {k: getattr(args, k) for k in KFOLD_OPTIONS if getattr(args, k) is not None}
    if args.temporal_blocks is not None and kfold:
        parser.error("--temporal-blocks excludes the k-fold options --folds, --group-key, --attribute and --seeds")
    if args.temporal_blocks is None and args.guard is not None:
        parser.error("--guard needs --temporal-blocks")
    source, output = Path(args.datalist), Path(args.output)
    document = json.loads(source.read_text())
    entries = document[args.section]
    try:
        if args.temporal_blocks is not None:
            guard = DEFAULT_GUARD if args.guard is None else args.guard
            document[args.section] = assign_temporal_blocks(entries, args.temporal_blocks, guard)
            report = temporal_block_report(document[args.section])
        else:
            folds, report = assign_folds(entries, **{"n_folds": DEFAULT_FOLDS, **kfold})
            document[args.section] = [{**entry, "fold": fold} for entry, fold in zip(entries, folds)]
    except ValueError as err:
        print(f"make_folds: {source}: {err}", file=sys.stderr)
        return 2
    if args.section == "training" and "numTraining" in document:
        document["numTraining"] = len(document["training"])
    document["folds"] = report
    if output.resolve().parent != source.resolve().parent:  # keep the data root valid from the new location
        root = (source.parent / document.get("root", ".")).resolve()
        document["root"] = Path(os.path.relpath(root, output.resolve().parent)).as_posix()
    atomic_write(output, lambda name: Path(name).write_text(json.dumps(document, indent=4) + "\n"))
    if report.get("method") == "temporal_blocks":
        print(f"{output}: {report['n_blocks']} temporal blocks per video, guard {report['guard']} frames")
    else:
        print(f"{output}: {report['n_folds']} folds, seed {report['seed']}, imbalance {report['imbalance']}")
        print(f"strata: {', '.join(report['strata'])}")
    print("| fold | entries | groups | frames | class presence |")
    print("|---|---|---|---|---|")
    for k, fold in enumerate(report["folds"]):
        presence = fold.get("class_presence", "-")
        print(f"| {k} | {fold['n_entries']} | {fold['n_groups']} | {fold['n_frames']} | {presence} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Assign stratified group k-fold indices to a datalist and write it (entries gain ``"fold"``).

    python scripts/make_folds.py datalists/bagls.json --folds 5 --attribute camera --output datalists/bagls_folds.json

Groups (``--group-key``, default ``group``: patient / case / acquisition) never straddle folds; strata join the
``--attribute`` value, frame-count and class-presence bins; the most balanced of ``--seeds`` wins (see
``vivim_monai.data.folds``). The report goes into the file (``"folds"``) and to stdout. Bundle configs train fold k
with ``fold=k`` (``load_datalist(..., fold=k, split="train"/"val")``) and a final model with ``fold=-1``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vivim_monai.data.folds import assign_folds
from vivim_monai.io import atomic_write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", help="datalist JSON from make_datalist.py (not modified)")
    parser.add_argument("--output", required=True, help="datalist with folds to write (atomically)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--group-key", default="group")
    parser.add_argument("--attribute", help="entry attribute to stratify on (e.g. histological, camera)")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(42, 52)))
    parser.add_argument("--section", default="training")
    args = parser.parse_args(argv)
    source, output = Path(args.datalist), Path(args.output)
    document = json.loads(source.read_text())
    entries = document[args.section]
    try:
        folds, report = assign_folds(entries, args.folds, args.group_key, args.attribute, args.seeds)
    except ValueError as err:
        print(f"make_folds: {source}: {err}", file=sys.stderr)
        return 2
    document[args.section] = [{**entry, "fold": fold} for entry, fold in zip(entries, folds)]
    document["folds"] = report
    if output.resolve().parent != source.resolve().parent:  # keep the data root valid from the new location
        root = (source.parent / document.get("root", ".")).resolve()
        document["root"] = Path(os.path.relpath(root, output.resolve().parent)).as_posix()
    atomic_write(output, lambda name: Path(name).write_text(json.dumps(document, indent=4) + "\n"))
    print(f"{output}: {args.folds} folds, seed {report['seed']}, imbalance {report['imbalance']}")
    print(f"strata: {', '.join(report['strata'])}")
    print("| fold | entries | groups | frames | class presence |")
    print("|---|---|---|---|---|")
    for k, fold in enumerate(report["folds"]):
        presence = fold.get("class_presence", "-")
        print(f"| {k} | {fold['n_entries']} | {fold['n_groups']} | {fold['n_frames']} | {presence} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

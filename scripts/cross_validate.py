"""Cross-validate the bundle: train and evaluate each fold, optionally retrain on all folds, tabulate mean ± sd.

    python scripts/cross_validate.py datalists/bagls_folds.json --output runs/bagls \\
        --set class_names='["background","glottis"]' --set label_format=binary --set use_fan=false \\
        --set focal_alpha=null --set epochs=30 --final

Each fold k trains ``bundle/configs/train.json`` with ``fold=k`` into ``<output>/fold_<k>`` (checkpoints, TensorBoard)
and evaluates it with ``train.json`` + ``evaluate.json`` (metrics in original frame geometry). ``--final`` then trains
``fold=-1`` (every case, no validation, final-epoch weights) into ``<output>/final``. The summary (per fold and
mean ± sd over folds of the per-frame metrics, per class and foreground mean) goes to ``<output>/cv_summary.csv``,
``<output>/cv_summary.md`` and stdout, wall times and the overlays (the repository's relative to it) to
``<output>/cv_timing.json``. ``--config overlay.json`` merges
config overlays after ``train.json`` (e.g. ``configs/carotid.json``, ``configs/vivim_tiny.json``); ``--set key=value``
passes bundle overrides to every run (JSON values). A fold already evaluated is kept; a fold whose training was
killed resumes at its last finished epoch (the rolling ``models/checkpoint_epoch=N.pt`` restores network, optimizer,
scheduler, trainer and random states, so it ends as an uninterrupted run would; its recorded training time is that of
the resumed part); ``--rerun`` repeats folds afresh. ``--reevaluate`` only evaluates the trained folds again
(``models/model.pt``) under this run's overrides, replacing their evaluation and keeping their training times: another
inference setting without retraining (give the training's ``--set`` too, so ``cv_timing.json`` records both).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from vivim_monai.bundle_cli import bundle_command, find_bundle, parse_override, run_bundle
from vivim_monai.data import datalist_folds
from vivim_monai.experiments import config_record
from vivim_monai.utils import atomic_write

METRICS = ("dice", "jaccard", "precision", "recall", "specificity", "hd95")


def fold_ids(datalist: Path, requested: list[int] | None) -> list[int]:
    """``requested`` (default: every fold of ``datalist``), checked against the datalist's folds."""
    try:
        folds = datalist_folds(datalist)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    missing = sorted(set(requested or []) - set(folds))
    if missing:
        raise SystemExit(f"{datalist}: no fold {missing} (folds: {folds})")
    return requested or folds


def resumable_state(fold_root: Path) -> Path | None:
    """The newest rolling training state (``models/checkpoint_epoch=N.pt``) of a fold whose training stopped before
    its last epoch (a killed run), to resume from; None when there is none or that training had finished (resuming a
    finished ignite run would start it again on top of the trained weights, so such a fold trains afresh)."""
    states = []
    for path in (fold_root / "models").glob("checkpoint_epoch=*.pt"):
        match = re.fullmatch(r"checkpoint_epoch=(\d+)\.pt", path.name)
        if match:
            states.append((int(match.group(1)), path))
    if not states:
        return None
    path = max(states)[1]
    try:
        trainer = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["trainer"]  # reads no weights
        epoch = int(trainer["iteration"]) // int(trainer["epoch_length"])
        finished = epoch >= int(trainer["max_epochs"])
    except Exception as error:  # an unreadable state is not worth failing the fold over: train it afresh
        print(f"{path}: not a readable training state ({error}); the fold trains afresh", file=sys.stderr)
        return None
    return None if finished else path


def summary_rows(summaries: dict[int, dict]) -> list[dict[str, str]]:
    """One row per metric and class: each fold's per-frame value, then mean and sd over folds."""
    rows = []
    first = next(iter(summaries.values()))
    for metric in METRICS:
        for name in first["by_frame"][metric]:
            values = [summaries[k]["by_frame"][metric][name] for k in summaries]
            numbers = np.array([np.nan if v is None else v for v in values], dtype=float)
            row = {"metric": metric, "class": name}
            row.update({f"fold_{k}": f"{v:.4f}" for k, v in zip(summaries, numbers)})
            valid = numbers[~np.isnan(numbers)]
            row["mean"] = f"{valid.mean():.4f}" if valid.size else "nan"
            row["sd"] = f"{valid.std(ddof=1):.4f}" if valid.size > 1 else "nan"
            rows.append(row)
    return rows


def write_tables(rows: list[dict[str, str]], output: Path) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(output / "cv_summary.csv", lambda name: Path(name).write_text(text.getvalue()))
    folds = [k for k in rows[0] if k.startswith("fold_")]
    lines = ["| metric | class | " + " | ".join(folds) + " | mean ± sd |", "|---" * (len(folds) + 3) + "|"]
    for row in rows:
        cells = " | ".join(row[k] for k in folds)
        lines.append(f"| {row['metric']} | {row['class']} | {cells} | {row['mean']} ± {row['sd']} |")
    markdown = "\n".join(lines) + "\n"
    atomic_write(output / "cv_summary.md", lambda name: Path(name).write_text(markdown))
    return markdown


def _finished_seconds(timing: Path) -> dict[str, float]:
    """Wall times of the folds an earlier, interrupted run finished (``cv_timing.json``; empty when absent)."""
    return json.loads(timing.read_text()).get("seconds", {}) if timing.is_file() else {}


def _write_timing(output: Path, seconds: dict[str, float], overlays: list[str], overrides: dict) -> None:
    """``cv_timing.json`` after every fold, so an interrupted run resumes at the first unfinished fold. Times another
    process wrote meanwhile (``--folds k`` runs side by side) are kept, under a lock so that two folds finishing at
    once cannot drop each other's; this run's own times win."""
    output.mkdir(parents=True, exist_ok=True)
    with FileLock(output / "cv_timing.json.lock"):
        seconds = {**_finished_seconds(output / "cv_timing.json"), **seconds}
        timing = json.dumps({"seconds": seconds, "configs": overlays, "overrides": overrides}, indent=4) + "\n"
        atomic_write(output / "cv_timing.json", lambda name: Path(name).write_text(timing))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", help="datalist with folds (scripts/make_folds.py)")
    parser.add_argument("--output", required=True, help="folder for one run per fold and the summary")
    parser.add_argument("--folds", type=int, nargs="+", help="folds to run (default: all)")
    parser.add_argument("--final", action="store_true", help="also retrain on all folds into <output>/final")
    parser.add_argument("--config", action="append", default=[], help="config overlay merged after train.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="bundle override")
    parser.add_argument(
        "--bundle", help="bundle folder (configs/; default: the checkout's bundle/ or $VIVIM_BUNDLE_DIR)"
    )
    parser.add_argument("--rerun", action="store_true", help="repeat folds an earlier run already evaluated")
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="evaluate the trained folds again under these overrides, without training (replaces their evaluation)",
    )
    args = parser.parse_args(argv)
    if args.reevaluate and (args.rerun or args.final):
        parser.error("--reevaluate evaluates trained folds only: it cannot be combined with --rerun or --final")
    datalist, output, bundle = Path(args.datalist).resolve(), Path(args.output).resolve(), find_bundle(args.bundle)
    overrides = dict(parse_override(text) for text in args.set)
    overlays = [str(Path(c).resolve()) for c in args.config]
    train, evaluate = ["train.json", *overlays], ["train.json", *overlays, "evaluate.json"]
    recorded = [config_record(c) for c in overlays]  # portable: the report rebuilds on another machine
    done = _finished_seconds(output / "cv_timing.json")
    # this run's own wall times: the file keeps the others' (folds not run now, or run by another process meanwhile)
    summaries, seconds = {}, {}
    for fold in fold_ids(datalist, args.folds):
        run = {**overrides, "bundle_root": str(output / f"fold_{fold}"), "datalist": str(datalist), "fold": fold}
        summary = output / f"fold_{fold}" / "eval" / "metrics_summary.json"
        if args.reevaluate:
            model = output / f"fold_{fold}" / "models" / "model.pt"
            if not model.is_file():
                raise SystemExit(f"{model}: fold {fold} has no trained model to evaluate again")
            seconds[f"evaluate_fold_{fold}"] = run_bundle(
                f"evaluate fold {fold} again", bundle_command(bundle, evaluate, run)
            )
            _write_timing(output, seconds, recorded, overrides)
        elif summary.is_file() and f"evaluate_fold_{fold}" in done and not args.rerun:
            print(f"fold {fold}: already evaluated in {summary.parent} (--rerun repeats it)")
        else:
            state = None if args.rerun else resumable_state(output / f"fold_{fold}")
            if state is not None:
                print(f"fold {fold}: resuming the interrupted training from {state} (--rerun starts it afresh)")
            resumed = {**run, "resume_checkpoint": str(state)} if state is not None else run
            seconds[f"train_fold_{fold}"] = run_bundle(f"train fold {fold}", bundle_command(bundle, train, resumed))
            seconds[f"evaluate_fold_{fold}"] = run_bundle(
                f"evaluate fold {fold}", bundle_command(bundle, evaluate, run)
            )
            _write_timing(output, seconds, recorded, overrides)
        summaries[fold] = json.loads(summary.read_text())
    evaluated = {**_finished_seconds(output / "cv_timing.json"), **seconds}
    for fold in fold_ids(datalist, None):  # folds evaluated by earlier runs belong in the table too
        summary = output / f"fold_{fold}" / "eval" / "metrics_summary.json"
        if fold not in summaries and summary.is_file() and f"evaluate_fold_{fold}" in evaluated:
            summaries[fold] = json.loads(summary.read_text())
    summaries = dict(sorted(summaries.items()))
    if args.final:
        run = {**overrides, "bundle_root": str(output / "final"), "datalist": str(datalist), "fold": -1}
        seconds["train_final"] = run_bundle("final training on all folds", bundle_command(bundle, train, run))
    _write_timing(output, seconds, recorded, overrides)
    print("\n" + write_tables(summary_rows(summaries), output))
    return 0


if __name__ == "__main__":
    sys.exit(main())

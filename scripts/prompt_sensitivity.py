"""Prompt sensitivity of a trained text-prompted model: Dice with the right prompt, another dataset's, an empty one.

    python scripts/prompt_sensitivity.py runs/prompted/datalist_joint.json --bundle-root runs/prompted/fold_0 \
        --fold 0 --config configs/text_prompted.json --output runs/prompted/fold_0/prompt_sensitivity

Runs the bundle's ``evaluate.json`` three times on fold ``--fold`` (``prompt_mode`` own / other / empty; "other" is
the next dataset's prompt) and writes ``prompt_sensitivity.md`` and ``.json``: foreground Dice per dataset (mean
over frames) in each mode and the drops. A model that ignores its prompt shows no drop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vivim_monai.bundle_cli import bundle_command, find_bundle, run_bundle
from vivim_monai.engines import PROMPT_MODES
from vivim_monai.experiments import per_dataset_means
from vivim_monai.utils import atomic_write


def sensitivity_table(dice: dict[str, dict[str, float]]) -> tuple[str, dict]:
    """Markdown table and JSON of ``dice[mode][dataset]``."""
    lines = [
        "| dataset | Dice, right prompt | another dataset's prompt | empty prompt | drop (other) | drop (empty) |",
        "|---|---|---|---|---|---|",
    ]
    rows = {}
    for name in dice["own"]:
        own, other, empty = (dice[mode].get(name, float("nan")) for mode in PROMPT_MODES)
        rows[name] = {"own": own, "other": other, "empty": empty, "drop_other": own - other, "drop_empty": own - empty}
        lines.append(f"| {name} | {own:.4f} | {other:.4f} | {empty:.4f} | {own - other:+.4f} | {own - empty:+.4f} |")
    return "\n".join(lines) + "\n", rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("datalist", help="joint datalist (scripts/make_prompted_datalist.py)")
    parser.add_argument("--bundle-root", required=True, help="the trained run (models/model.pt inside)")
    parser.add_argument("--fold", type=int, required=True, help="fold to evaluate (-1: every case)")
    parser.add_argument("--config", action="append", default=[], help="config overlays used for training")
    parser.add_argument("--output", required=True, help="folder for the three evaluations and the table")
    parser.add_argument("--bundle", help="bundle folder (default: the checkout's bundle/ or $VIVIM_BUNDLE_DIR)")
    args = parser.parse_args(argv)
    bundle, output = find_bundle(args.bundle), Path(args.output).resolve()
    configs = ["train.json", *(str(Path(c).resolve()) for c in args.config), "evaluate.json"]
    dice = {}
    for mode in PROMPT_MODES:
        run = {
            "bundle_root": str(Path(args.bundle_root).resolve()),
            "datalist": str(Path(args.datalist).resolve()),
            "fold": args.fold,
            "prompt_mode": mode,
            "output_dir": str(output / mode),
        }
        run_bundle(f"evaluate, prompt mode {mode}", bundle_command(bundle, configs, run))
        per_dataset = per_dataset_means(output / mode / "metrics_per_frame.csv", ["dice_target"])
        dice[mode] = {name: columns["dice_target"][0] for name, columns in per_dataset.items()}
    markdown, rows = sensitivity_table(dice)
    atomic_write(output / "prompt_sensitivity.md", lambda name: Path(name).write_text(markdown))
    atomic_write(output / "prompt_sensitivity.json", lambda name: Path(name).write_text(json.dumps(rows, indent=4)))
    print("\n" + markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

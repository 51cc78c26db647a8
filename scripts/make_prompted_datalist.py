"""Join folded datalists of several datasets into one for a text-prompted model (each case gains its prompt).

    python scripts/make_prompted_datalist.py --dataset carotid=runs/compare/carotid/datalist_folds.json \
        --dataset bagls=runs/compare/bagls/datalist_folds.json --dataset vtus=runs/compare/vtus/datalist_folds.json \
        --output runs/prompted/datalist_joint.json

Prompts come from ``dataset_prompts`` of ``--prompts-config`` (default ``configs/text_prompted.json``); cases keep
their datasets' folds, ids become ``<dataset>/<case>`` (see ``vivim_monai.data.joint``). Inputs are not modified.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vivim_monai.data.joint import write_prompted_datalist

DEFAULT_PROMPTS = Path(__file__).resolve().parents[1] / "configs" / "text_prompted.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", required=True, metavar="NAME=DATALIST", help="a folded datalist")
    parser.add_argument("--prompts-config", default=str(DEFAULT_PROMPTS), help="JSON with dataset_prompts")
    parser.add_argument("--output", required=True, help="joint datalist to write (atomically)")
    args = parser.parse_args(argv)
    sources = {}
    for text in args.dataset:
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            parser.error(f"--dataset {text!r} is not NAME=DATALIST")
        sources[name] = path
    try:
        prompts = json.loads(Path(args.prompts_config).read_text())["dataset_prompts"]
        document = write_prompted_datalist(args.output, sources, prompts)
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    counts = {name: sum(e["dataset"] == name for e in document["training"]) for name in sources}
    print(f"{args.output}: {document['numTraining']} cases {counts}, folds {document['folds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

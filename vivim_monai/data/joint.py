"""One datalist from several datasets' folded datalists, each case carrying its dataset's text prompt.

A text-prompted model trains on all datasets at once: the binary target of a case is what its prompt names. Cases
keep their datasets' folds (so fold k of the joint datalist validates fold k of each dataset that has it, and never
mixes a case into the other side), their ids gain the dataset's name (``carotid/<case>``) and ``dataset`` and
``prompt`` fields; paths become relative to the common folder of all of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from vivim_monai.data.datalist import PATH_KEYS, load_datalist, write_datalist

__all__ = ["DATASET_SEPARATOR", "dataset_of_case", "write_prompted_datalist"]

DATASET_SEPARATOR = "/"


def dataset_of_case(case_id: str) -> str:
    """The dataset of a joint datalist's case id (``carotid/<case>`` -> ``carotid``)."""
    if DATASET_SEPARATOR not in case_id:
        raise ValueError(f"case id {case_id!r} has no dataset prefix (<dataset>{DATASET_SEPARATOR}<case>)")
    return case_id.split(DATASET_SEPARATOR, 1)[0]


def _paths(entry: Mapping[str, Any]) -> list[str]:
    found = []
    for key in PATH_KEYS:
        value = entry.get(key)
        if value is not None:
            found.extend(value if isinstance(value, list) else [value])
    return found


def write_prompted_datalist(
    output: str | os.PathLike, sources: Mapping[str, str | os.PathLike], prompts: Mapping[str, str]
) -> dict[str, Any]:
    """Write the joint datalist of ``sources`` (dataset name -> folded datalist) with ``prompts`` (name -> prompt)."""
    missing = sorted(set(sources) - set(prompts))
    if missing:
        raise ValueError(f"no prompt for dataset(s) {missing}; prompts are given for {sorted(prompts)}")
    entries: list[dict[str, Any]] = []
    for name, path in sources.items():
        if DATASET_SEPARATOR in name:
            raise ValueError(f"dataset name {name!r} must not contain {DATASET_SEPARATOR!r}")
        for entry in load_datalist(path, split="all"):
            if "fold" not in entry:
                raise ValueError(f"{path}: entry {entry.get('case_id')} has no 'fold'; run scripts/make_folds.py first")
            case = f"{name}{DATASET_SEPARATOR}{entry['case_id']}"
            group = f"{name}{DATASET_SEPARATOR}{entry.get('group', entry['case_id'])}"
            entries.append({**entry, "case_id": case, "group": group, "dataset": name, "prompt": prompts[name]})
    if not entries:
        raise ValueError("the source datalists have no entries")
    root = Path(os.path.commonpath([p for entry in entries for p in _paths(entry)]))
    root = root if root.is_dir() else root.parent
    for entry in entries:
        for key in PATH_KEYS:
            value = entry.get(key)
            if isinstance(value, list):
                entry[key] = [os.path.relpath(v, root) for v in value]
            elif value is not None:
                entry[key] = os.path.relpath(value, root)
    folds = sorted({entry["fold"] for entry in entries})
    datasets = {
        name: {"source": os.fspath(Path(path).resolve()), "prompt": prompts[name]} for name, path in sources.items()
    }
    return write_datalist(
        output, entries, root, "mixed", ["background", "target"], name="prompted", folds=folds, datasets=datasets
    )

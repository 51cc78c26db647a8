"""Datalists of cine datasets: folder layouts -> MONAI-style JSON (one entry per case/video) and back.

Layouts (:data:`LAYOUTS`):

* ``"carotid"``: ``<acq>/images/<acq>_slice_<n>.png`` with ``<acq>/masks/<same name>`` (lumen 255); ``n`` is the
  source frame index (time order, irregular gaps) -> one entry per acquisition, ``frame_indices`` = the ``n``.
* ``"bagls"``: ``video_<id>/<n>.png`` with ``<n>_seg.png`` (glottis 255) and ``<n>.meta`` (JSON: camera, sampling
  rate, ...). The order of frames inside a BAGLS video is unknown (numbers are shuffled across the set), so
  ``frame_order`` is ``"unknown"``: use it per frame or per video, never for temporal metrics.
* ``"ovarian"``: ``<case>/.../<frame_dir>/frame.png`` with ``background.png``, ``solid.png``, ``non-solid.png``
  (missing = class absent) and optional ``fan.png`` -> one entry per video (the folder holding the frame folders,
  so clips never join two videos), grouped by clinical case; an optional CSV (``clinical_case``, ``histological``,
  ...) adds case attributes. Frame folders sort naturally by path, not lexicographically.
* ``"dicom"``: DICOM cines in a folder (recursively) with optional ``<stem>_label.<nii.gz|nii|mha|nrrd>``
  class-index volumes (what :func:`~vivim_monai.data.write_phantom_case` writes); grouped by PatientID.
* ``"vtus"``: the VTUS thyroid ultrasound videos of the Vivim paper: ``Train/<video>/<n>.jpg`` with
  ``Train_GT/<video>/<n>.png`` (nodule 255), and the same under ``Test``/``Test_GT`` when present -> one entry per
  video and split folder (``case_id`` ``"<split>/<video>"``, ``split`` ``"Train"``/``"Test"``), grouped by video,
  frames in numeric order, ``frame_indices`` = the ``n``.

Entry paths are relative to the datalist's ``root`` (itself relative to the datalist file, or replaced at load time,
e.g. by a bundle's ``dataset_dir``); :func:`load_datalist` makes them absolute again.
Entries split into temporal blocks (:func:`~vivim_monai.data.assign_temporal_blocks`) lose, on the training side of
fold k, the ``temporal_guard`` frames next to block k (see :func:`load_datalist`).
"""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import pydicom

from vivim_monai.data.cine import frame_files, natural_key
from vivim_monai.data.dicom import CineReadError, has_dicom_preamble
from vivim_monai.data.labels import OVARIAN_CLASS_FILES, OVARIAN_CLASSES, load_label_cine
from vivim_monai.utils.atomic import atomic_write

__all__ = [
    "FRAME_KEYS",
    "LAYOUTS",
    "LAYOUT_CLASSES",
    "PATH_KEYS",
    "datalist_folds",
    "discover_cases",
    "load_datalist",
    "slice_frames",
    "write_datalist",
]

LAYOUTS = ("carotid", "bagls", "ovarian", "dicom", "vtus")
LAYOUT_CLASSES = {
    "carotid": ("background", "lumen"),
    "bagls": ("background", "glottis"),
    "ovarian": OVARIAN_CLASSES,
    "dicom": OVARIAN_CLASSES,
    "vtus": ("background", "nodule"),
}
#: Entry keys that hold paths (a path or a list of paths).
PATH_KEYS = ("image", "label", "fan")
#: Entry keys that may hold one value per frame (lists sliced together by :func:`slice_frames`).
FRAME_KEYS = ("image", "label", "fan", "frame_indices")
VTUS_SPLITS = ("Train", "Test")
_LABEL_SUFFIXES = ("_label.nii.gz", "_label.nii", "_label.mha", "_label.nrrd")


def _relative(paths: Sequence[Path], root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p in paths]


def _slice_number(path: Path) -> int:
    match = re.search(r"_slice_(\d+)$", path.stem)
    if not match:
        raise CineReadError(f"{path}: carotid frame name must end in _slice_<n> (the source frame index)")
    return int(match.group(1))


def _carotid(root: Path) -> list[dict[str, Any]]:
    entries = []
    for acquisition in sorted((p for p in root.iterdir() if (p / "images").is_dir()), key=lambda p: p.name):
        images = frame_files(acquisition / "images")
        masks = [acquisition / "masks" / p.name for p in images]
        missing = [str(m) for m in masks if not m.is_file()]
        if missing:
            raise CineReadError(f"{missing[0]}: mask missing for its frame ({len(missing)} missing in {acquisition})")
        entries.append(
            {
                "case_id": acquisition.name,
                "group": acquisition.name,
                "image": _relative(images, root),
                "label": _relative(masks, root),
                "label_format": "binary",
                "frame_order": "temporal",
                "frame_indices": [_slice_number(p) for p in images],
            }
        )
    return entries


def _bagls(root: Path) -> list[dict[str, Any]]:
    entries = []
    for video in sorted(
        (p for p in root.iterdir() if p.is_dir() and p.name.startswith("video_")), key=lambda p: p.name
    ):
        images = [p for p in frame_files(video, "*.png") if p.stem.isdigit()]
        if not images:
            continue
        masks = [p.with_name(f"{p.stem}_seg.png") for p in images]
        missing = [str(m) for m in masks if not m.is_file()]
        if missing:
            raise CineReadError(f"{missing[0]}: mask missing for its frame ({len(missing)} missing in {video})")
        meta_file = images[0].with_suffix(".meta")
        meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        entries.append(
            {
                "case_id": video.name,
                "group": video.name,
                "image": _relative(images, root),
                "label": _relative(masks, root),
                "label_format": "binary",
                "frame_order": "unknown",
                "frame_indices": [int(p.stem) for p in images],
                "camera": meta.get("Camera"),
                "sampling_rate_hz": meta.get("Sampling rate (Hz)"),
                "colour": meta.get("Color"),
                "disorder_status": meta.get("Subject disorder status"),
            }
        )
    return entries


def _frame_number(path: Path) -> int:
    if not path.stem.isdigit():
        raise CineReadError(f"{path}: VTUS frame name must be its frame number (e.g. 0001.jpg)")
    return int(path.stem)


def _vtus(root: Path) -> list[dict[str, Any]]:
    entries = []
    for split in (s for s in VTUS_SPLITS if (root / s).is_dir()):
        for video in sorted((p for p in (root / split).iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
            images = frame_files(video)
            if not images:
                continue
            masks = [root / f"{split}_GT" / video.name / f"{p.stem}.png" for p in images]
            missing = [str(m) for m in masks if not m.is_file()]
            if missing:
                raise CineReadError(f"{missing[0]}: mask missing for its frame ({len(missing)} missing in {video})")
            entries.append(
                {
                    "case_id": f"{split}/{video.name}",
                    "group": video.name,
                    "image": _relative(images, root),
                    "label": _relative(masks, root),
                    "label_format": "binary",
                    "frame_order": "temporal",
                    "frame_indices": [_frame_number(p) for p in images],
                    "split": split,
                }
            )
    return entries


def _case_attributes(metadata_csv: str | os.PathLike | None) -> dict[str, dict[str, str]]:
    if metadata_csv is None:
        return {}
    with open(metadata_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "clinical_case" not in rows[0]:
        raise ValueError(f"{metadata_csv}: needs a 'clinical_case' column, found {list(rows[0])}")
    return {row["clinical_case"]: {k: v for k, v in row.items() if k != "clinical_case"} for row in rows}


def _ovarian(root: Path, metadata_csv: str | os.PathLike | None) -> list[dict[str, Any]]:
    attributes = _case_attributes(metadata_csv)
    videos: dict[Path, list[Path]] = {}
    for frame in root.rglob("frame.png"):
        if any((frame.parent / name).is_file() for name in OVARIAN_CLASS_FILES):  # annotated frames only
            videos.setdefault(frame.parent.parent, []).append(frame.parent)
    entries = []
    for video in sorted(videos, key=lambda p: natural_key(p.relative_to(root).as_posix())):
        folders = sorted(videos[video], key=lambda p: natural_key(p.relative_to(root).as_posix()))
        case = folders[0].relative_to(root).parts[0]
        fans = [f / "fan.png" for f in folders if (f / "fan.png").is_file()]
        entry = {
            "case_id": video.relative_to(root).as_posix() if video != root else case,
            "group": case,
            "image": _relative([f / "frame.png" for f in folders], root),
            "label": _relative(folders, root),
            "label_format": "class_masks",
            "frame_order": "temporal",
        }
        if fans:
            entry["fan"] = _relative(fans, root)
        entry.update(attributes.get(case, {}))
        entries.append(entry)
    return entries


def _dicom(root: Path) -> list[dict[str, Any]]:
    entries = []
    files = [
        p for p in root.rglob("*") if p.is_file() and (p.suffix.lower() in (".dcm", ".dicom") or has_dicom_preamble(p))
    ]
    for path in sorted(files, key=lambda p: natural_key(p.relative_to(root).as_posix())):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as err:  # noqa: BLE001 - any unreadable header is reported the same way
            raise CineReadError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from err
        stem = path.name[: -len(path.suffix)] if path.suffix else path.name
        labels = [
            path.with_name(stem + suffix) for suffix in _LABEL_SUFFIXES if path.with_name(stem + suffix).is_file()
        ]
        entry = {
            "case_id": path.relative_to(root).as_posix(),
            "group": str(ds.get("PatientID", "") or stem),
            "image": path.relative_to(root).as_posix(),
            "label_format": "index",
            "frame_order": "temporal",
            "modality": str(ds.get("Modality", "")),
        }
        if labels:
            entry["label"] = labels[0].relative_to(root).as_posix()
        entries.append(entry)
    return entries


def _scan_labels(entries: list[dict[str, Any]], root: Path, num_classes: int) -> None:
    """Add ``n_frames`` and ``class_frames`` (frames where each class is present) to labelled entries."""
    for entry in entries:
        if "label" not in entry:
            continue
        label = _absolute(entry["label"], root)
        values = load_label_cine(label, label_format=entry["label_format"]).numpy()[0]  # (H, W, T)
        present = [(values == c).any(axis=(0, 1)) for c in range(num_classes)]
        entry["n_frames"] = int(values.shape[-1])
        entry["class_frames"] = [int(p.sum()) for p in present]


def discover_cases(
    root: str | os.PathLike,
    layout: str,
    metadata_csv: str | os.PathLike | None = None,
    scan_labels: bool = True,
    class_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Datalist entries (paths relative to ``root``) of the cases of a folder ``layout``.

    Args:
        root: dataset folder.
        layout: one of :data:`LAYOUTS`.
        metadata_csv: ovarian layout only: per-case attributes (``clinical_case`` column).
        scan_labels: read the labels to add ``n_frames`` and ``class_frames`` (for fold stratification).
        class_names: classes (default :data:`LAYOUT_CLASSES`), used by ``scan_labels``.
    """
    root = Path(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if not root.is_dir():
        raise CineReadError(f"{root}: dataset folder does not exist")
    entries = {
        "carotid": _carotid,
        "bagls": _bagls,
        "dicom": _dicom,
        "vtus": _vtus,
        "ovarian": lambda folder: _ovarian(folder, metadata_csv),
    }[layout](root)
    if not entries:
        raise CineReadError(f"{root}: no cases of the {layout!r} layout found (see vivim_monai.data.datalist)")
    for entry in entries:
        if isinstance(entry["image"], list):
            entry["n_frames"] = len(entry["image"])
    if scan_labels:
        _scan_labels(entries, root, len(class_names or LAYOUT_CLASSES[layout]))
    return entries


def write_datalist(
    path: str | os.PathLike,
    entries: list[dict[str, Any]],
    root: str | os.PathLike,
    layout: str,
    class_names: Sequence[str],
    name: str = "",
    **extra: Any,
) -> dict[str, Any]:
    """Write a datalist JSON atomically (4-space indent); ``root`` is stored relative to the file's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "name": name or Path(root).resolve().name,
        "layout": layout,
        "root": Path(os.path.relpath(Path(root).resolve(), path.parent.resolve())).as_posix(),
        "labels": {str(index): label for index, label in enumerate(class_names)},
        "path_keys": list(PATH_KEYS),
        **extra,
        "numTraining": len(entries),
        "training": entries,
    }
    atomic_write(path, lambda name: Path(name).write_text(json.dumps(document, indent=4) + "\n"))
    return document


def slice_frames(entry: dict[str, Any], start: int, stop: int) -> dict[str, Any]:
    """Copy of a frame-list entry keeping frames ``start:stop`` of every per-frame list (:data:`FRAME_KEYS`).

    A list of another length (an ovarian ``fan`` list holds only the frames that have a fan image; its union is the
    static fan) is kept whole. ``class_frames`` stays only where the slice's counts follow from it (every class
    present in all or none of the frames); otherwise it is dropped rather than guessed.
    """
    if not isinstance(entry.get("image"), list):
        raise ValueError(f"entry {entry.get('case_id')!r}: frames can only be sliced from a list of frame images")
    total = len(entry["image"])
    part = dict(entry)
    for key in FRAME_KEYS:
        if isinstance(entry.get(key), list) and len(entry[key]) == total:
            part[key] = entry[key][start:stop]
    part["n_frames"] = len(part["image"])
    counts = part.pop("class_frames", None)
    if counts is not None and all(c in (0, total) for c in counts):
        part["class_frames"] = [part["n_frames"] if c else 0 for c in counts]
    return part


def _guard_trimmed(entry: dict[str, Any], fold: int) -> dict[str, Any]:
    """Training side of ``fold``: a temporal block next to the validation block loses its ``temporal_guard`` frames
    that border it, so no frame adjacent to a validation frame trains (near-duplicate neighbours leak)."""
    guard, block = entry.get("temporal_guard", 0), entry.get("block")
    if block is None or not guard:
        return entry
    if block == fold - 1:
        return slice_frames(entry, 0, len(entry["image"]) - guard)
    if block == fold + 1:
        return slice_frames(entry, guard, len(entry["image"]))
    return entry


def _absolute(value: Any, root: Path) -> Any:
    if isinstance(value, list):
        return [str(root / v) for v in value]
    return str(root / value)


def load_datalist(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    fold: int | None = None,
    split: str = "all",
    section: str = "training",
) -> list[dict[str, Any]]:
    """Entries of a datalist with absolute paths, optionally one side of a cross-validation fold.

    Args:
        path: datalist JSON (from ``scripts/make_datalist.py`` / ``scripts/make_folds.py``).
        root: data folder overriding the datalist's own ``root`` (e.g. a bundle's ``dataset_dir``).
        fold: fold index (entries carry ``"fold"`` after ``make_folds.py``); None or -1: every entry is training
            data and the validation side is empty (the final retrain on all folds).
        split: ``"train"`` (fold != ``fold``), ``"val"`` (fold == ``fold``) or ``"all"``. Temporal blocks
            (entries with ``"block"`` and ``"temporal_guard"``) next to block ``fold`` lose their
            ``temporal_guard`` frames bordering it on the ``"train"`` side only.
        section: datalist section.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable datalist ({err})") from err
    if section not in document:
        raise ValueError(
            f"{path}: no {section!r} section (sections: {[k for k, v in document.items() if isinstance(v, list)]})"
        )
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    base = Path(root) if root is not None else (path.parent / document.get("root", ".")).resolve()
    path_keys = document.get("path_keys", PATH_KEYS)
    if split == "val" and (fold is None or fold < 0):
        return []  # a final model trained on every fold has no validation side
    entries = []
    for entry in document[section]:
        if fold is not None and fold >= 0 and split != "all":
            if "fold" not in entry:
                raise ValueError(f"{path}: entry {entry.get('case_id')} has no 'fold'; run scripts/make_folds.py first")
            if (entry["fold"] == fold) != (split == "val"):
                continue
            if split == "train":
                entry = _guard_trimmed(entry, fold)
        entries.append({k: _absolute(v, base) if k in path_keys and v is not None else v for k, v in entry.items()})
    return entries


def datalist_folds(path: str | os.PathLike) -> list[int]:
    """The sorted fold ids of a datalist whose entries carry ``fold`` (``scripts/make_folds.py``,
    ``scripts/compare_models.py``); ValueError naming the file and the entry when one has none."""
    entries = load_datalist(path)
    unfolded = [entry.get("case_id") for entry in entries if "fold" not in entry]
    if unfolded:
        raise ValueError(f"{path}: entry {unfolded[0]} has no 'fold'; run scripts/make_folds.py first")
    return sorted({int(entry["fold"]) for entry in entries})

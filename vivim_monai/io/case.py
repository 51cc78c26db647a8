"""All outputs of one predicted cine: NIfTI labels, DICOM SEG, overlay GIF and per-frame areas in one folder.

Layout: ``<output_dir>/<case_id>/<case_id>_seg.nii.gz``, ``<case_id>_seg.dcm``, ``<case_id>_overlay.gif``,
``<case_id>_areas.csv`` and its plot ``<case_id>_areas.png``. A cine without DICOM parent (NIfTI, frame images) also
gets ``<case_id>_cine.dcm``, a Multi-frame Secondary Capture of its frames that the SEG references (see
:mod:`vivim_monai.io.secondary_capture`). Each file is written atomically (a failure leaves no partial file, files
written before it stay complete); inputs are only read, and an output path that would be an input raises before
anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from monai.utils import convert_to_numpy

from vivim_monai.data.cine import VOLUME_SUFFIXES
from vivim_monai.data.dicom import has_dicom_preamble
from vivim_monai.data.labels import OVARIAN_CLASSES
from vivim_monai.io._labels import as_label_volume
from vivim_monai.io.dicom_seg import write_dicom_seg
from vivim_monai.io.frame_table import write_area_plot, write_frame_csv
from vivim_monai.io.nifti import write_nifti_labels
from vivim_monai.io.overlay import write_overlay_gif
from vivim_monai.io.secondary_capture import write_secondary_capture

__all__ = ["COMPANION_FILES", "OUTPUT_KINDS", "CaseOutputs", "case_id_for", "write_case_outputs"]

#: Output kinds and their file name endings.
OUTPUT_KINDS: dict[str, str] = {
    "nifti": "_seg.nii.gz",
    "dicom_seg": "_seg.dcm",
    "overlay": "_overlay.gif",
    "csv": "_areas.csv",
}
#: Files written with a kind (key in :attr:`CaseOutputs.files` -> (kind, file name ending)): the area plot with the
#: CSV, and the Secondary Capture source with the DICOM SEG of a cine that has no DICOM parent.
COMPANION_FILES: dict[str, tuple[str, str]] = {
    "area_plot": ("csv", "_areas.png"),
    "dicom_source": ("dicom_seg", "_cine.dcm"),
}


@dataclass
class CaseOutputs:
    """What :func:`write_case_outputs` wrote (kind -> path) and skipped (kind -> reason)."""

    case_id: str
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def case_id_for(source: str | os.PathLike) -> str:
    """Case name of an input: the file name without its image suffix (``a.nii.gz`` -> ``a``), or the folder name."""
    name = Path(source).name
    for suffix in sorted((*VOLUME_SUFFIXES, ".dcm", ".dicom"), key=len, reverse=True):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _is_dicom_file(path: Path) -> bool:
    return path.is_file() and (path.suffix.lower() in (".dcm", ".dicom") or has_dicom_preamble(path))


def _meta(cine: Any) -> Mapping[str, Any]:
    return getattr(cine, "meta", None) or {}


def _spacing(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    values = convert_to_numpy(value, wrap_sequence=True).astype(float).ravel()
    return (float(values[0]), float(values[1])) if values.size >= 2 else None


def write_case_outputs(
    cine: Any,
    labels: Any,
    output_dir: str | os.PathLike,
    source: str | os.PathLike | None = None,
    class_names: Sequence[str] = OVARIAN_CLASSES,
    case_id: str | None = None,
    kinds: Sequence[str] = tuple(OUTPUT_KINDS),
    spacing_mm: Sequence[float] | None = None,
    frame_time_ms: float | None = None,
    overlay_max_size: int | None = 512,
    overlay_frame_step: int = 1,
    seg_kwargs: Mapping[str, Any] | None = None,
) -> CaseOutputs:
    """Write the outputs of one cine's prediction; returns the written paths and the skipped kinds with reasons.

    Args:
        cine: the input cine ``(C, H, W, T)`` as loaded by :func:`vivim_monai.data.load_cine` (a MetaTensor whose
            metadata gives the defaults below) or any array.
        labels: predicted class indices ``(H, W, T)`` or ``(1, H, W, T)`` on the cine's frame grid.
        output_dir: parent of the case folder (created if needed).
        source: the input file or folder (default: ``cine.meta["filename_or_obj"]``); the DICOM SEG references it
            when it is a DICOM file, else the Secondary Capture of ``cine`` written beside it.
        class_names: all class names, background first.
        case_id: name of the case folder and file prefix (default: :func:`case_id_for` of ``source``).
        kinds: which of :data:`OUTPUT_KINDS` to write (each with its :data:`COMPANION_FILES`).
        spacing_mm: (row, column) pixel spacing (default: ``meta["pixel_spacing_mm"]``); unknown leaves the CSV's
            mm² columns empty, the plot in pixels and the NIfTI spacing at 1.
        frame_time_ms: frame interval (default: ``meta["frame_time_ms"]`` unless its source is ``"default"``, i.e.
            a guess; then the CSV's time column is empty and the GIF plays at 30 frames/s).
        overlay_max_size, overlay_frame_step: GIF downsizing (see :func:`write_overlay_gif`).
        seg_kwargs: extra arguments of :func:`write_dicom_seg` (algorithm name and version, series number, ...).
    """
    meta = _meta(cine)
    unknown = set(kinds) - set(OUTPUT_KINDS)
    if unknown:
        raise ValueError(f"unknown output kinds {sorted(unknown)}; choose from {list(OUTPUT_KINDS)}")
    source = source if source is not None else meta.get("filename_or_obj")
    source_path = Path(source) if source else None
    if case_id is None:
        if source_path is None:
            raise ValueError("give case_id or source (or a cine whose meta has filename_or_obj)")
        case_id = case_id_for(source_path)
    spacing = _spacing(spacing_mm if spacing_mm is not None else meta.get("pixel_spacing_mm"))
    if frame_time_ms is None and meta.get("frame_time_ms") is not None and meta.get("frame_time_source") != "default":
        frame_time_ms = float(convert_to_numpy(meta["frame_time_ms"], wrap_sequence=True).ravel()[0])
    volume = as_label_volume(labels)
    cine_shape = tuple(getattr(cine, "shape", ()))
    if len(cine_shape) != 4 or cine_shape[1:] != volume.shape:
        raise ValueError(f"labels (H, W, T) {volume.shape} do not match the cine (C, H, W, T) {cine_shape}")
    folder = Path(output_dir) / case_id
    paths = {kind: folder / f"{case_id}{OUTPUT_KINDS[kind]}" for kind in kinds}
    has_dicom_parent = source_path is not None and _is_dicom_file(source_path)
    for name, (kind, end) in COMPANION_FILES.items():
        if kind in kinds and not (name == "dicom_source" and has_dicom_parent):
            paths[name] = folder / f"{case_id}{end}"
    inputs = {Path(name).resolve() for name in meta.get("frame_files", [])}
    if source_path is not None:
        inputs.add(source_path.resolve())
    clashes = [str(path) for path in paths.values() if path.resolve() in inputs]
    if clashes:
        raise ValueError(f"refusing to overwrite inputs with outputs: {clashes}")

    result = CaseOutputs(case_id, folder)
    if "nifti" in paths:
        result.files["nifti"] = write_nifti_labels(volume, paths["nifti"], spacing, frame_time_ms)
    if "dicom_seg" in paths:
        parent = source_path
        if "dicom_source" in paths:  # the SEG needs source images: the cine as DICOM
            parent = write_secondary_capture(cine, paths["dicom_source"], case_id, spacing, frame_time_ms)
            result.files["dicom_source"] = parent
        options = dict(seg_kwargs or {})
        result.files["dicom_seg"] = write_dicom_seg(volume, parent, paths["dicom_seg"], class_names, **options)
    if "overlay" in paths:
        result.files["overlay"] = write_overlay_gif(
            cine,
            volume,
            paths["overlay"],
            frame_time_ms,
            max_size=overlay_max_size,
            frame_step=overlay_frame_step,
        )
    if "csv" in paths:
        result.files["csv"] = write_frame_csv(volume, paths["csv"], class_names, spacing, frame_time_ms)
        title = f"{case_id}: structure area over time"
        result.files["area_plot"] = write_area_plot(
            volume, paths["area_plot"], class_names, spacing, frame_time_ms, title=title
        )
    return result

"""The bundle workflow of ``adapt.json``: cines with box prompts and/or partial labels -> the bundle's usual outputs.

Each input goes through :func:`~vivim_monai.fewshot.segment.segment_with_prompts` (methods and ``auto`` there); the
outputs are those of ``inference.json`` (NIfTI, DICOM SEG, GIF overlay, area CSV/PNG) plus ``<case>_prompts.json``
and the adapted weights. :class:`PromptedCineWorkflow` is what ``python -m monai.bundle run --config_file
configs/adapt.json`` runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from vivim_monai.data import load_cine, load_label_cine
from vivim_monai.fewshot.adapt import AdaptConfig
from vivim_monai.fewshot.prompts import PromptError, parse_boxes
from vivim_monai.fewshot.segment import segment_with_prompts
from vivim_monai.io import write_case_outputs
from vivim_monai.io.case import case_id_for
from vivim_monai.utils import atomic_write

__all__ = ["PromptedCineWorkflow"]


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


class PromptedCineWorkflow:
    """Bundle workflow of ``adapt.json``: each input cine with its boxes and/or partial label -> outputs.

    Args:
        input_files: one cine path or a list (DICOM, NIfTI/MHA/NRRD, frame folder).
        output_dir: the outputs go to ``<output_dir>/<case>/`` as in ``inference.json``, plus
            ``<case>_prompts.json`` (per-frame status, events, timing) and, after adaptation, ``<case>_adapted.pt``.
        labels: a partial label file per input (None where an input has only boxes).
        labelled_frames: labelled frame indices per input (None: frames not entirely 255 are labelled).
        boxes: box prompts per input (a JSON string or list; with one input, its prompts directly).
        class_names: background first; their count is the number of classes.
        method, start, pseudo_frames: see :func:`segment_with_prompts`.
        recipe: :class:`AdaptConfig` fields.
        output_kinds: what :func:`~vivim_monai.io.write_case_outputs` writes.
    """

    def __init__(
        self,
        input_files: Any,
        output_dir: str | os.PathLike,
        labels: Any = None,
        labelled_frames: Any = None,
        boxes: Any = None,
        class_names: Sequence[str] = ("background", "structure"),
        method: str = "auto",
        start: str = "imagenet",
        pseudo_frames: int = 8,
        recipe: dict[str, Any] | None = None,
        output_kinds: Sequence[str] = ("nifti", "dicom_seg", "overlay", "csv"),
        label_format: str = "index",
        bundle: str | os.PathLike | None = None,
    ) -> None:
        self.inputs = [str(p) for p in _as_list(input_files)]
        if not self.inputs:
            raise PromptError("input_files: no cine given")
        single = len(self.inputs) == 1
        self.labels = [labels] if single and not isinstance(labels, (list, tuple)) else _as_list(labels)
        self.labels = self.labels or [None] * len(self.inputs)
        boxes = parse_boxes(boxes) if single and boxes is not None else boxes
        self.boxes = [boxes] if single else list(boxes or [None] * len(self.inputs))
        frames = labelled_frames
        self.frames = [frames] if single else list(frames or [None] * len(self.inputs))
        for name, values in (("labels", self.labels), ("boxes", self.boxes), ("labelled_frames", self.frames)):
            if len(values) != len(self.inputs):
                raise PromptError(f"{name}: {len(values)} entries for {len(self.inputs)} input files; give one each")
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.method, self.start, self.pseudo_frames = method, start, pseudo_frames
        self.config = AdaptConfig(**(recipe or {}))
        self.kinds, self.label_format, self.bundle = list(output_kinds), label_format, bundle

    def run_one(self, index: int) -> dict[str, Any]:
        path = self.inputs[index]
        cine = load_cine(path)
        label = None
        if self.labels[index] is not None:
            label = load_label_cine(self.labels[index], self.label_format)
        result = segment_with_prompts(
            cine,
            boxes=self.boxes[index],
            label=label,
            labelled_frames=self.frames[index],
            method=self.method,
            num_classes=len(self.class_names),
            start=self.start,
            config=self.config,
            pseudo_frames=self.pseudo_frames,
            bundle=self.bundle,
            source=path if label is None else f"{path} with {self.labels[index]}",
        )
        written = write_case_outputs(cine, result.labels, self.output_dir, path, self.class_names, kinds=self.kinds)
        report = {"input": path, "label": self.labels[index], **result.report()}
        if result.adapter is not None:
            weights = written.folder / f"{written.case_id}_adapted.pt"
            report["adapted_weights"] = str(result.adapter.save(weights))
        report["outputs"] = {kind: str(p) for kind, p in written.files.items()}
        target = written.folder / f"{written.case_id}_prompts.json"
        atomic_write(target, lambda name: Path(name).write_text(json.dumps(report, indent=4)))
        return report

    def run(self) -> list[dict[str, Any]]:
        reports = []
        for index in range(len(self.inputs)):
            report = self.run_one(index)
            counts = report["status_counts"]
            print(
                (
                    f"{case_id_for(self.inputs[index])}: {report['method']}, {report['frames']} frames {counts}, "
                    f"{report['seconds'].get('total', 0):.0f} s -> {Path(report['outputs']['nifti']).parent}"
                    if "nifti" in report["outputs"]
                    else f"{case_id_for(self.inputs[index])}: {report['method']} {counts}"
                ),
                flush=True,
            )
            for event in report["events"]:
                print(f"  {event}", flush=True)
            reports.append(report)
        return reports

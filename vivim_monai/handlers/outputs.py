"""Per-case prediction outputs of an evaluator (NIfTI, DICOM SEG, overlay GIF, area CSV and plot) written as each
iteration completes.

The network saw a cropped, resized, normalised image, so the overlay is drawn on the ORIGINAL cine, re-read with
:func:`~vivim_monai.data.load_cine` from the case's source (``image_source`` when the datalist carries it, else the
image metadata); the prediction must already be in that geometry (MONAI ``Invertd``). Files go to
``<output_dir>/<case_id>/`` through :func:`~vivim_monai.io.write_case_outputs` (atomic, refuses to overwrite
inputs); inputs are only read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

from ignite.engine import Engine, Events

from vivim_monai.data import load_cine
from vivim_monai.engines.cases import engine_cases
from vivim_monai.io import OUTPUT_KINDS, CaseOutputs, write_case_outputs

__all__ = ["CaseOutputHandler"]

logger = logging.getLogger("vivim_monai.inference")


class CaseOutputHandler:
    """Write every case's outputs at ``ITERATION_COMPLETED``; attach with ``attach(engine)``.

    Args:
        output_dir: parent of the per-case folders.
        class_names: all class names, background first (DICOM SEG segments, CSV columns).
        kinds: which of :data:`~vivim_monai.io.OUTPUT_KINDS` to write (default: all; a source that is not a DICOM
            file also gets the Secondary Capture ``<case_id>_cine.dcm`` its DICOM SEG references).
        overlay_max_size: longer side of the GIF frames in pixels (None keeps the cine's size).

    ``written`` lists the :class:`~vivim_monai.io.CaseOutputs` of the current run.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        kinds: Sequence[str] | None = None,
        overlay_max_size: int | None = 512,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = tuple(str(name) for name in class_names)
        self.kinds = tuple(kinds) if kinds is not None else tuple(OUTPUT_KINDS)
        unknown = set(self.kinds) - set(OUTPUT_KINDS)
        if unknown:
            raise ValueError(f"unknown output kinds {sorted(unknown)}; choose from {list(OUTPUT_KINDS)}")
        self.overlay_max_size = overlay_max_size
        self.written: list[CaseOutputs] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        self.written = []

    def __call__(self, engine: Engine) -> None:
        for case in engine_cases(engine):
            if case.source is None:
                raise ValueError(
                    f"{case.case_id}: no source to re-read the cine from (image_source or filename_or_obj)"
                )
            cine = load_cine(case.source)
            # a list of frame files is no single source file: the writer then names the cine's folder; spacing and
            # frame time unknown to the case metadata fall back to the re-read cine's own
            outputs = write_case_outputs(
                cine,
                case.pred.cpu(),
                self.output_dir,
                source=case.source if isinstance(case.source, str) else None,
                class_names=self.class_names,
                case_id=case.case_id,
                kinds=self.kinds,
                spacing_mm=case.spacing_mm,
                frame_time_ms=case.frame_time_ms,
                overlay_max_size=self.overlay_max_size,
            )
            self.written.append(outputs)
            logger.info("%s: wrote %s to %s", case.case_id, ", ".join(outputs.files) or "nothing", outputs.folder)
            for kind, reason in outputs.skipped.items():
                logger.info("%s: %s skipped: %s", case.case_id, kind, reason)

"""The DICOM validator ``dciodvfy`` (Debian package dicom3tools) for tests: run it, sort its findings.

``bash scripts/setup_env.sh --dev`` installs it when it is missing and apt can run as root; elsewhere the tests that
need it skip, saying why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

INSTALL_HINT = "apt-get install -y dicom3tools, which bash scripts/setup_env.sh --dev does as root"
#: ``Error - Illegal root for UID - "<uid>" in (gggg,eeee) <name>``
_ILLEGAL_UID = re.compile(r'^Error - Illegal root for UID - "([^"]*)"')
#: The source UIDs a SEG must repeat exactly: its study, and the series and instance it references.
SOURCE_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


@dataclass
class Findings:
    """What ``dciodvfy`` said about one file: ``Error -`` and ``Warning -`` lines, and everything it printed."""

    path: Path
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""


def dciodvfy() -> str:
    """Path of ``dciodvfy``, or skip the test with the reason."""
    program = shutil.which("dciodvfy")
    if program is None:
        pytest.skip(f"dciodvfy (DICOM validator) is not installed: {INSTALL_HINT}")
    return program


def validate(path: str | Path) -> Findings:
    """Run ``dciodvfy`` on ``path`` (skips the test without it)."""
    done = subprocess.run([dciodvfy(), str(path)], capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    lines = [line.strip() for line in output.splitlines()]
    return Findings(
        Path(path),
        errors=[line for line in lines if line.startswith("Error -")],
        warnings=[line for line in lines if line.startswith("Warning -")],
        output=output,
    )


def source_uids(source: str | Path | pydicom.Dataset) -> set[str]:
    """The UIDs of ``source`` that a SEG derived from it repeats (:data:`SOURCE_UID_KEYWORDS`)."""
    if not isinstance(source, pydicom.Dataset):
        source = pydicom.dcmread(source, stop_before_pixels=True)
    return {str(source[keyword].value) for keyword in SOURCE_UID_KEYWORDS if keyword in source}


def inherited_uid_errors(findings: Findings, uids: set[str]) -> list[str]:
    """The ``Illegal root for UID`` errors whose UID is one of ``uids`` (the source's own, which the SEG must
    reference as they are); every other error is the writer's."""
    return [line for line in findings.errors if (match := _ILLEGAL_UID.match(line)) and match.group(1) in uids]

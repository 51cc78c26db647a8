"""Run the repository's MONAI bundle with ``python -m monai.bundle run`` from Python (main job, cross-validation)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["BUNDLE_ENV", "bundle_command", "find_bundle", "parse_override", "run_bundle"]

#: Environment variable naming the bundle folder (``configs/train.json`` inside) when none is passed.
BUNDLE_ENV = "VIVIM_BUNDLE_DIR"


def find_bundle(bundle: str | os.PathLike | None = None) -> Path:
    """The bundle folder to run: ``bundle``, else ``$VIVIM_BUNDLE_DIR``, else ``bundle/`` of the source checkout the
    package is imported from (an editable install). A wheel carries no bundle: then this raises, saying what to pass.
    """
    if bundle is not None:
        candidate, origin = Path(bundle), "the bundle folder passed"
    elif os.environ.get(BUNDLE_ENV):
        candidate, origin = Path(os.environ[BUNDLE_ENV]), f"${BUNDLE_ENV}"
    else:
        candidate, origin = Path(__file__).resolve().parents[1] / "bundle", "the source checkout of vivim_monai"
    if not (candidate / "configs" / "train.json").is_file():
        raise FileNotFoundError(
            f"{candidate} ({origin}) is not a bundle folder: no configs/train.json. Pass the bundle folder "
            f"(--bundle) or set {BUNDLE_ENV}; a non-editable install of vivim_monai does not include the bundle."
        )
    return candidate.resolve()


def bundle_command(bundle: Path, configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    """``python -m monai.bundle run`` over ``bundle/configs/<configs>`` (merged in order) with ``--key value``.

    Non-string values are written as Python literals (``False``, ``None``, ``[256, 256]``): ``monai.bundle run``
    parses its arguments with fire, which reads JSON's ``false`` / ``null`` as the strings ``'false'`` / ``'null'``."""
    files = [str(p if Path(p).is_absolute() else bundle / "configs" / p) for p in configs]
    command = [sys.executable, "-m", "monai.bundle", "run"]
    command += ["--config_file", files[0] if len(files) == 1 else json.dumps(files)]
    command += ["--meta_file", str(bundle / "configs" / "metadata.json")]
    command += ["--logging_file", str(bundle / "configs" / "logging.conf")]
    for key, value in overrides.items():
        command += [f"--{key}", value if isinstance(value, str) else repr(value)]
    return command


def run_bundle(title: str, command: list[str]) -> float:
    """Print and run one bundle command (failing loudly); returns its wall time in seconds."""
    print(f"\n=== {title}\n$ {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` with ``value`` read as JSON when it parses (numbers, lists, true/null), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"override {text!r} is not key=value")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value

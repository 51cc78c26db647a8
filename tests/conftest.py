"""Shared test helpers: where the real data lives and how tests skip without it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIVIM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_SCHEMAS = SHARED_DATA.parent / "schemas"


def shared_dir(name: str) -> Path:
    """Folder ``name`` of the shared real data, or skip the test with the reason."""
    folder = SHARED_DATA / name
    if not (folder / "manifest.json").is_file():
        pytest.skip(f"real data {folder} is absent (set VIVIM_SHARED_DATA to the shared data folder)")
    return folder


def manifest(name: str) -> dict:
    return json.loads((shared_dir(name) / "manifest.json").read_text())


BUNDLE_CONFIGS = REPO_ROOT / "bundle" / "configs"
BUNDLE_META, BUNDLE_LOGGING = str(BUNDLE_CONFIGS / "metadata.json"), str(BUNDLE_CONFIGS / "logging.conf")


def bundle_workflow(kind: str, files: list[str], **override):
    """A ``ConfigWorkflow`` over ``bundle/configs/<files>`` (absolute paths kept), merged in order."""
    from monai.bundle import ConfigWorkflow

    config = [str(BUNDLE_CONFIGS / f) for f in files]
    return ConfigWorkflow(
        config_file=config if len(config) > 1 else config[0],
        meta_file=BUNDLE_META,
        logging_file=BUNDLE_LOGGING,
        workflow_type=kind,
        **override,
    )

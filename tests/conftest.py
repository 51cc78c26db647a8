"""Shared test helpers: where the real data lives and how tests skip without it."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIVIM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_SCHEMAS = SHARED_DATA.parent / "schemas"
#: Bundle overrides that shrink the default network to Vivim-tiny (MiT, nothing packaged to load: pretrained off).
TINY_NETWORK = {"network_def#variant": "tiny", "network_def#pretrained": False}


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


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (to prove inputs are left untouched)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_digests(*folders: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file under ``folders`` (``__pycache__`` left out)."""
    return {
        str(path): file_digest(path)
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

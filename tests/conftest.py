"""Shared test helpers: where the real data lives and how tests skip without it."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIVIM_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_SCHEMAS = SHARED_DATA.parent / "schemas"
#: MONAI Label's isolated environment (scripts/setup_monailabel.sh), built by the tests that serve the bundle
MONAILABEL_VENV = Path(os.environ.get("VIVIM_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
#: Bundle override: Vivim-tiny from random initialisation instead of the default network (fast workflow tests).
TINY_NETWORK = {
    "network_def": {
        "_target_": "vivim_monai.networks.Vivim",
        "variant": "tiny",
        "pretrained": False,
        "in_channels": "@in_channels",
        "out_channels": "@num_classes",
    }
}


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


def train_with_snapshot(workflow) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Initialise, run and finalise a training ``ConfigWorkflow``: ``(network, weights before, weights after)``."""
    workflow.initialize()
    network = workflow.parser.get_parsed_content("network")
    before = {k: v.clone() for k, v in network.state_dict().items()}
    workflow.run()
    workflow.finalize()
    return network, before, network.state_dict()


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


def counted_overlap(pred: np.ndarray, label: np.ndarray, num_classes: int) -> dict[str, np.ndarray]:
    """Dice and Jaccard per frame and class of index clips ``(..., H, W, T)``, by counting pixels: an oracle that
    shares no code with the package (NaN where a class is absent from both)."""
    pred, label = np.asarray(pred), np.asarray(label)
    dice, jaccard = (np.full((pred.shape[-1], num_classes), np.nan) for _ in range(2))
    for t in range(pred.shape[-1]):
        for c in range(num_classes):
            p, g = pred[..., t] == c, label[..., t] == c
            if p.any() or g.any():
                both = (p & g).sum()
                dice[t, c] = 2.0 * both / (p.sum() + g.sum())
                jaccard[t, c] = both / (p | g).sum()
    return {"dice": dice, "jaccard": jaccard}


def bundle_augmentation(vertical_flip_prob: float = 0.5, **overrides):
    """``train#preprocessing`` of ``train.json`` (the clip augmentation), with ``train#augmentation`` overrides such
    as ``{"rotate#prob": 1.0}``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(BUNDLE_CONFIGS / "train.json")])
    parser["vertical_flip_prob"] = vertical_flip_prob
    for key, value in overrides.items():
        parser[f"train#augmentation#{key}"] = value
    return parser.get_parsed_content("train#preprocessing")


#: Tiers: a test with none of these markers is ``quick`` (``bash scripts/test.sh -m quick``).
TIER_MARKERS = ("slow", "integration", "realdata", "gpu")
#: What in a test's (or its fixtures') source shows that it reads ``../shared/data``.
_REAL_DATA_CALLS = ("shared_dir(", "manifest(", "SHARED_DATA")


def _source(function: object) -> str:
    try:
        return inspect.getsource(function)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""


def _real_data_helpers(module: ModuleType) -> set[str]:
    """Functions of a test module that read the shared data, directly or through another such function."""
    functions = {
        n: _source(f) for n, f in vars(module).items() if inspect.isfunction(f) and f.__module__ == module.__name__
    }
    found: set[str] = set()
    while True:
        calls = (*_REAL_DATA_CALLS, *(f"{name}(" for name in found))
        more = {n for n, source in functions.items() if n not in found and any(c in source for c in calls)}
        if not more:
            return found
        found |= more


def _reads_real_data(item: pytest.Item, helpers: set[str]) -> bool:
    functions = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for definitions in info.name2fixturedefs.values() if info is not None else ():
        functions += [definition.func for definition in definitions]
    calls = (*_REAL_DATA_CALLS, *(f"{name}(" for name in helpers))
    return any(call in _source(function) for function in functions if function is not None for call in calls)


#: The longest test files (quiet 2-core figures in docs/performance.md §9), collected first so that parallel workers
#: (scripts/test.sh: pytest-xdist, whole files per worker, ``--no-loadscope-reorder``) start them early and finish
#: together instead of one worker running a long file alone at the end. Only the order changes, never what runs.
LONGEST_FILES = (
    "test_bundle.py",
    "test_export.py",
    "test_released.py",
    "test_medivista.py",
    "test_monailabel_annotation.py",  # fifth: its environment installs in the background meanwhile (about 3 min)
    "test_monailabel.py",
    "test_package.py",
    "test_fewshot.py",
    "test_reliability.py",
    "test_demo.py",
)


#: Files that share a fixed resource run on the same worker, one after the other: both MONAI Label files serve the
#: packaged bundle from ``<.venv-monailabel>/serve-test`` (a fixed path, so the kernel compiles once; see
#: tests/test_monailabel.py), and each module's fixture stops a server left there.
SAME_WORKER = {"tests/test_monailabel_annotation.py": "tests/test_monailabel.py"}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist's whole-file scheduling (``--dist loadfile``), with the files of :data:`SAME_WORKER` as one unit
    of work; other ``--dist`` modes are left to xdist."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SharedResourceScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return SAME_WORKER.get(scope, scope)

    return SharedResourceScheduling(config, log)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start building MONAI Label's environment in the background when a selected test needs it (the
    ``monailabel_venv`` fixture; once: the first xdist worker, or the only process). Its pip installs wait on the
    package index for about half of their wall time, which would otherwise idle a worker; the tests' own call of the
    same script waits for this one (the script's lock) and then finds it done. Output: ``<environment>.setup.log``."""
    if os.environ.get("PYTEST_XDIST_WORKER", "gw0") != "gw0" or session.config.getoption("collectonly"):
        return
    if not any("monailabel_venv" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    MONAILABEL_VENV.parent.mkdir(parents=True, exist_ok=True)
    log = open(f"{MONAILABEL_VENV}.setup.log", "w")  # noqa: SIM115 (kept open by the child process)
    subprocess.Popen(
        ["bash", str(REPO_ROOT / "scripts" / "setup_monailabel.sh")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VIVIM_MONAILABEL_VENV": str(MONAILABEL_VENV)},
        start_new_session=True,
    )
    log.close()


def _file_rank(item: pytest.Item) -> int:
    name = item.path.name
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark tests that read the shared real data ``realdata``, and every test without a tier marker ``quick``; the
    longest files first (:data:`LONGEST_FILES`; a stable sort keeps each file's own order)."""
    items.sort(key=_file_rank)
    helpers: dict[str, set[str]] = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module.__name__ not in helpers:
            helpers[module.__name__] = _real_data_helpers(module)
        if _reads_real_data(item, helpers.get(getattr(module, "__name__", ""), set())):
            item.add_marker(pytest.mark.realdata)
        if not any(item.get_closest_marker(name) for name in TIER_MARKERS):
            item.add_marker(pytest.mark.quick)

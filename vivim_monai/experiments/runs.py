"""Read one model's cross-validation folder (``scripts/cross_validate.py``) and rebuild its bundle configuration."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from vivim_monai.bundle_cli import find_bundle

__all__ = ["ModelRun", "build_network", "config_record", "count_parameters", "load_run", "model_parser"]

_FOLD = re.compile(r"fold_(\d+)$")


@dataclass
class ModelRun:
    """One model's run folder: per-fold evaluation summaries, wall times and the config overlays it was trained with.

    ``summaries`` maps fold -> ``metrics_summary.json`` (folds not evaluated yet are absent); ``fold_dirs`` lists
    every ``fold_<k>`` folder (also those still training); ``seconds`` is ``cv_timing.json``'s ``seconds``.
    """

    name: str
    path: Path
    summaries: dict[int, dict[str, Any]] = field(default_factory=dict)
    fold_dirs: dict[int, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    configs: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def folds(self) -> list[int]:
        return sorted(self.summaries)


def _repo_configs() -> Path:
    """The repository's ``configs/`` overlays (beside the bundle folder)."""
    return find_bundle().parent / "configs"


def config_record(path: str | Path) -> str:
    """How ``cv_timing.json`` records an overlay: relative to the repository (``configs/carotid.json``) when it lies
    inside it, so the record holds on any machine and checkout; absolute otherwise (a user's own overlay)."""
    path, root = Path(path).resolve(), _repo_configs().parent.resolve()
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def _resolve_config(path: str) -> str:
    """An overlay path from ``cv_timing.json``: a relative one is the repository's (:func:`config_record`); an
    absolute one that no longer exists (a moved run) falls back to the repository's ``configs/<name>``."""
    candidate = Path(path) if Path(path).is_absolute() else _repo_configs().parent / path
    if candidate.is_file() or not (_repo_configs() / candidate.name).is_file():
        return str(candidate)
    return str(_repo_configs() / candidate.name)


def load_run(path: Path, name: str, dataset_config: Path | None = None) -> ModelRun:
    """Read ``<path>``: ``fold_<k>/eval/metrics_summary.json`` and ``cv_timing.json``.

    Without ``cv_timing.json`` (a run still in progress) the overlays are ``dataset_config`` and the repository's
    ``configs/<name>.json``, with no overrides; without either, ``configs`` stays empty (the network is unknown).
    """
    run = ModelRun(name=name, path=path)
    for folder in sorted(path.glob("fold_*")) if path.is_dir() else []:
        match = _FOLD.match(folder.name)
        if match and folder.is_dir():
            fold = int(match.group(1))
            run.fold_dirs[fold] = folder
            summary = folder / "eval" / "metrics_summary.json"
            if summary.is_file():
                run.summaries[fold] = json.loads(summary.read_text())
    timing = path / "cv_timing.json"
    if timing.is_file():
        document = json.loads(timing.read_text())
        run.seconds = {k: float(v) for k, v in document.get("seconds", {}).items()}
        run.configs = [_resolve_config(c) for c in document.get("configs", [])]
        run.overrides = dict(document.get("overrides", {}))
    elif (_repo_configs() / f"{name}.json").is_file():
        candidates = [dataset_config, _repo_configs() / f"{name}.json"]
        run.configs = [str(c) for c in candidates if c is not None and Path(c).is_file()]
    return run


def model_parser(run: ModelRun, evaluate: bool = False, **settings: Any) -> ConfigParser:
    """``train.json`` (+ ``evaluate.json``) merged with the run's overlays and overrides, then ``settings``."""
    bundle = find_bundle()
    files = [str(bundle / "configs" / "train.json"), *run.configs]
    if evaluate:
        files.append(str(bundle / "configs" / "evaluate.json"))
    parser = ConfigParser()
    parser.read_config(files)
    for key, value in {**run.overrides, **settings}.items():
        parser[key] = value
    return parser


def build_network(run: ModelRun) -> torch.nn.Module:
    """The run's ``network_def``, randomly initialised."""
    return model_parser(run).get_parsed_content("network_def")


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return int(sum(p.numel() for p in module.parameters()))

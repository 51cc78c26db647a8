#!/usr/bin/env python
"""Run the MONAI Model Zoo checks on a packaged bundle, offline, in a clean virtual environment.

Static checks (this interpreter): zoo layout, version ↔ changelog, 4-space JSON (the zoo's ``pretty-format-json``),
no file over 1 MB unless listed in ``large_files.yml``, no personal paths, no reference to the repository package,
black / isort / flake8 at 120 columns on the bundle's ``scripts`` (tools of this interpreter).

Runtime checks (``--venv``: a virtual environment made from ``metadata.json`` alone — torch, monai, numpy and
``required_packages_version`` pinned as the zoo's ``requirements_<bundle>.txt`` does — without this repository; run on
a *copy* of the bundle, which is never modified): ``verify_metadata`` against a local schema, ``verify_net_in_out``,
the zoo-style unit test (``scripts/zoo_unit_test.py``: train → evaluate → infer on tiny synthetic cines) and
``ckpt_export`` of the trained checkpoint to TorchScript (traced with the portable PyTorch scan), whose output is
compared with the eager network. Results are printed as a table and written to ``--report`` (JSON).

    python scripts/verify_bundle.py dist/vivim_cine_segmentation --venv .venv-zoo \\
        --schema ../shared/schemas/meta_schema_20240725.json --report dist/zoo_checks.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "meta_schema_20240725.json"
MAX_FILE_BYTES = 1024 * 1024
# machine-specific roots that must not appear in a shared bundle (user homes, work and temporary folders, drives)
_PERSONAL_ROOTS = ("home", "Users", "work", "root", "tmp")
PERSONAL_PATH = re.compile(rf"(?<![\w.])(/(?:{'|'.join(_PERSONAL_ROOTS)})/|[A-Z]:\\\\)")
TEXT_SUFFIXES = {".py", ".json", ".conf", ".md", ".txt", ".yml", ".yaml", ".cpp"}
# ckpt_export of the network the zoo unit test trained (the bundle's default), traced as the Model Zoo does.
EXPORT_OVERRIDES: dict[str, object] = {}
EXPORT_SHAPE = [1, 3, 64, 64, 5]


class Checks:
    """Ordered check results: name → (passed, detail)."""

    def __init__(self) -> None:
        self.results: dict[str, dict] = {}

    def record(self, name: str, passed: bool, detail: str = "", seconds: float | None = None) -> bool:
        self.results[name] = {"passed": bool(passed), "detail": detail}
        if seconds is not None:
            self.results[name]["seconds"] = round(seconds, 1)
        mark = "PASS" if passed else "FAIL"
        timing = f" ({seconds:.0f} s)" if seconds is not None else ""
        print(f"[{mark}] {name}{timing}: {detail}", flush=True)
        return passed

    @property
    def passed(self) -> bool:
        return all(result["passed"] for result in self.results.values())


def _files(bundle: Path) -> list[Path]:
    return sorted(p for p in bundle.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def _large_files(bundle: Path) -> set[str]:
    listing = bundle / "large_files.yml"
    if not listing.is_file():
        return set()
    return set(re.findall(r'path:\s*"?([^"\n]+)"?', listing.read_text(encoding="utf-8")))


def _version_key(version: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"[.\-]", version))


def static_checks(bundle: Path, checks: Checks) -> None:
    """Checks that need no environment: layout, version, JSON format, sizes, paths, package name, style."""
    required = ["configs/metadata.json", "configs/inference.json", "configs/train.json", "LICENSE", "docs/README.md"]
    missing = [name for name in required if not (bundle / name).is_file()]
    missing += [] if (bundle / "scripts" / "__init__.py").is_file() else ["scripts/__init__.py"]
    checks.record("layout", not missing, f"missing {missing}" if missing else "configs, docs, scripts, LICENSE")
    weights = bundle / "models" / "model.pt"
    checks.record(
        "preferred files",
        True,
        (
            "models/model.pt present"
            if weights.is_file()
            else "no models/model.pt: no released weights (zoo: exclude_verify_preferred_files_list)"
        ),
    )

    meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
    version, changelog = meta.get("version", ""), meta.get("changelog", {})
    latest = max(changelog, key=_version_key) if changelog else None
    checks.record(
        "version/changelog",
        version in changelog and latest == version,
        f"version {version}, newest changelog entry {latest}",
    )

    badly_formatted = []
    for path in bundle.rglob("*.json"):
        text = path.read_text(encoding="utf-8")
        if text != json.dumps(json.loads(text), indent=4, ensure_ascii=False) + "\n":
            badly_formatted.append(str(path.relative_to(bundle)))
    checks.record(
        "JSON 4-space",
        not badly_formatted,
        f"not pretty-printed: {badly_formatted}" if badly_formatted else "every .json pretty-printed, 4 spaces",
    )

    listed = _large_files(bundle)
    too_large = [
        f"{p.relative_to(bundle)} ({p.stat().st_size / 1e6:.2f} MB)"
        for p in _files(bundle)
        if p.stat().st_size > MAX_FILE_BYTES and str(p.relative_to(bundle)) not in listed
    ]
    biggest = max(_files(bundle), key=lambda p: p.stat().st_size)
    checks.record(
        "no file over 1 MB",
        not too_large,
        f"too large: {too_large}" if too_large else f"largest {biggest.relative_to(bundle)} {biggest.stat().st_size} B",
    )

    personal, repository = [], []
    for path in _files(bundle):
        if path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if PERSONAL_PATH.search(text):
            personal.append(str(path.relative_to(bundle)))
        if "vivim_monai" in text and path.suffix not in (".md", ".txt"):  # docs may name the repository
            repository.append(str(path.relative_to(bundle)))
    checks.record("no personal paths", not personal, f"in {personal}" if personal else "configs and code")
    checks.record(
        "self-contained code",
        not repository,
        f"repository package referenced in {repository}" if repository else "configs reference scripts.*",
    )

    code = str(bundle / "scripts")
    for tool, command in (
        ("black", [sys.executable, "-m", "black", "--check", "-q", "-l", "120", code]),
        ("isort", [sys.executable, "-m", "isort", "--check-only", "-q", "--profile", "black", "-l", "120", code]),
        ("flake8", [sys.executable, "-m", "flake8", "--max-line-length", "120", "--extend-ignore", "E203,W503", code]),
    ):
        done = subprocess.run(command, capture_output=True, text=True)
        detail = (done.stdout + done.stderr).strip().splitlines()
        checks.record(f"style: {tool}", done.returncode == 0, "; ".join(detail[:5]) or "120 columns")


def requirements(meta: dict) -> list[str]:
    """Pins of the zoo's ``requirements_<bundle>.txt``: torch, monai, numpy and every required package."""
    pins = [f"torch=={meta['pytorch_version']}", f"monai=={meta['monai_version']}", f"numpy=={meta['numpy_version']}"]
    pins += [f"{name}=={version}" for name, version in meta.get("required_packages_version", {}).items()]
    return pins


def make_venv(venv: Path, meta: dict) -> Path:
    """A virtual environment with only the bundle's requirements (reused when its pins file matches)."""
    python = venv / "bin" / "python"
    pins = "\n".join(requirements(meta)) + "\n"
    stamp = venv / "bundle-requirements.txt"
    if python.is_file() and stamp.is_file() and stamp.read_text() == pins:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    for batch in (requirements(meta)[:1], requirements(meta)[1:]):  # torch first: the local CPU wheel if there is one
        done = subprocess.run(pip + batch, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{venv}: installing {' '.join(batch)} failed:\n{done.stderr[-3000:]}")
    stamp.write_text(pins)
    return python


def _run(python: Path, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _tail(done: subprocess.CompletedProcess, lines: int = 6) -> str:
    """The last output lines, warnings left out."""
    text = [line for line in (done.stdout + done.stderr).strip().splitlines() if "warn" not in line.lower()]
    return " | ".join(text[-lines:])


def runtime_checks(bundle: Path, python: Path, schema: Path | None, checks: Checks, timeout: float = 1800) -> None:
    """The zoo's runtime checks on a copy of ``bundle`` with ``python`` (no repository on its path)."""
    work = Path(tempfile.mkdtemp(prefix="zoo_verify_"))
    try:
        copy = work / bundle.name
        shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("__pycache__"))
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update(PYTHONPATH=str(copy), BUNDLE_ROOT=str(copy), PYTHONNOUSERSITE="1", HF_HUB_OFFLINE="1")
        meta, inference = "configs/metadata.json", "configs/inference.json"

        probe = _run(
            python, ["-c", "import importlib.util as u; print(u.find_spec('vivim_monai') is None)"], copy, env, 60
        )
        clean = probe.stdout.strip() == "True"
        checks.record("clean environment", clean, "vivim_monai not importable" if clean else _tail(probe))

        if schema is None or not schema.is_file():
            checks.record("verify_metadata", False, f"no local schema file {schema} (the check must run offline)")
        else:
            local_schema = work / "schema.json"
            shutil.copyfile(schema, local_schema)
            started = time.perf_counter()
            done = _run(
                python,
                ["-m", "monai.bundle", "verify_metadata", "--meta_file", meta, "--filepath", str(local_schema)],
                copy,
                env,
                300,
            )
            ok = done.returncode == 0 and "metadata is verified" in (done.stdout + done.stderr)
            checks.record("verify_metadata", ok, _tail(done, 2), time.perf_counter() - started)

        started = time.perf_counter()
        args = ["verify_net_in_out", "network_def", "--meta_file", meta, "--config_file", inference]
        done = _run(python, ["-m", "monai.bundle", *args, "--n", "2", "--any", "5", "--device", "cpu"], copy, env, 600)
        ok = done.returncode == 0 and "data shape of network is verified" in (done.stdout + done.stderr)
        checks.record("verify_net_in_out", ok, _tail(done, 2), time.perf_counter() - started)

        started = time.perf_counter()
        done = _run(python, ["-m", "unittest", "-v", "zoo_unit_test"], Path(__file__).parent, env, timeout)
        ok = done.returncode == 0 and (copy / "models" / "model.pt").is_file()
        checks.record("zoo unit test (train → evaluate → infer)", ok, _tail(done, 3), time.perf_counter() - started)
        if not ok:
            checks.record("ckpt_export (TorchScript)", False, "skipped: no checkpoint from the unit test")
            return

        started = time.perf_counter()
        overrides = [f"--{key}={value}" for key, value in EXPORT_OVERRIDES.items()]
        args = ["ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt"]
        args += ["--meta_file", meta, "--config_file", inference, "--key_in_ckpt", "model", "--use_trace", "True"]
        args += ["--input_shape", json.dumps(EXPORT_SHAPE), *overrides]
        done = _run(python, ["-m", "monai.bundle", *args], copy, env, 900)
        exported = done.returncode == 0 and (copy / "models" / "model.ts").is_file()
        if not exported:
            checks.record("ckpt_export (TorchScript)", False, _tail(done), time.perf_counter() - started)
            return
        parity = _run(python, ["-c", _PARITY, json.dumps(EXPORT_OVERRIDES), json.dumps(EXPORT_SHAPE)], copy, env, 600)
        detail = parity.stdout.strip().splitlines()[-1] if parity.returncode == 0 else _tail(parity)
        checks.record("ckpt_export (TorchScript)", parity.returncode == 0, detail, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# Load models/model.ts and compare it with the eager network of the same checkpoint (run inside the bundle copy).
_PARITY = """
import json, sys, torch
from monai.bundle import ConfigParser
overrides, shape = json.loads(sys.argv[1]), json.loads(sys.argv[2])
parser = ConfigParser()
parser.read_config("configs/inference.json")
for key, value in overrides.items():
    parser[key] = value
net = parser.get_parsed_content("network_def", instantiate=True).eval()
net.load_state_dict(torch.load("models/model.pt", weights_only=True)["model"])
scripted = torch.jit.load("models/model.ts").eval()
x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    diff = (scripted(x) - net(x)).abs().max().item()
assert diff < 1e-4, f"TorchScript differs from eager by {diff}"
print(f"models/model.ts loads; max |TorchScript - eager| = {diff:.2e} on {shape}")
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="packaged bundle folder (scripts/package_bundle.py)")
    parser.add_argument("--venv", type=Path, help="clean environment to create or reuse for the runtime checks")
    parser.add_argument("--python", type=Path, help="use this interpreter for the runtime checks instead of --venv")
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA, help="local metadata schema (offline)")
    parser.add_argument("--static-only", action="store_true", help="skip the runtime checks")
    parser.add_argument("--report", type=Path, help="write the results as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = args.bundle.resolve()
    if not (bundle / "configs" / "metadata.json").is_file():
        raise SystemExit(f"{bundle}: not a bundle (no configs/metadata.json)")
    checks = Checks()
    static_checks(bundle, checks)
    if not args.static_only:
        if args.python is None and args.venv is None:
            raise SystemExit("pass --venv DIR (a clean environment is created there) or --python, or --static-only")
        meta = json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))
        started = time.perf_counter()
        python = args.python or make_venv(args.venv.resolve(), meta)
        if args.python is None:
            checks.record("clean venv from metadata pins", True, str(python), time.perf_counter() - started)
        runtime_checks(bundle, python, args.schema, checks)
    if args.report:
        from vivim_monai.utils import (
            atomic_write,  # the repository's writer; this script runs in the project environment
        )

        report = json.dumps(checks.results, indent=4, ensure_ascii=False) + "\n"
        atomic_write(args.report, lambda temporary: Path(temporary).write_text(report, encoding="utf-8"))
    print("all zoo checks passed" if checks.passed else "some zoo checks FAILED")
    return 0 if checks.passed else 1


if __name__ == "__main__":
    sys.exit(main())

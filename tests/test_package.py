"""Model Zoo packaging (scripts/package_bundle.py) and the zoo checks (scripts/verify_bundle.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, SHARED_SCHEMAS, file_digest, load_script, tree_digests

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

package_bundle = load_script("package_bundle")
verify_bundle = load_script("verify_bundle")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    source_before = tree_digests(REPO_ROOT / "bundle")
    output = tmp_path_factory.mktemp("dist")
    folder, archive = package_bundle.package(output)
    assert tree_digests(REPO_ROOT / "bundle") == source_before, "the source bundle is never modified"
    return folder, archive


def test_zoo_layout_and_vendored_code(packaged):
    folder, archive = packaged
    assert folder.name == package_bundle.BUNDLE_NAME
    version = json.loads((folder / "configs" / "metadata.json").read_text())["version"]
    assert archive.name == f"{package_bundle.BUNDLE_NAME}_v{version}.zip"
    for name in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "LICENSE", "docs/README.md"):
        assert (folder / name).is_file(), name
    vendored = {p.relative_to(folder / "scripts").as_posix() for p in (folder / "scripts").rglob("*") if p.is_file()}
    assert {"__init__.py", "networks/nets/vivim.py", "ops/csrc/selective_scan_cpu.cpp", "io/dicom_seg.py"} <= vendored
    assert "demo.py" not in vendored and "experiments/__init__.py" not in vendored, "only what the configs reach"
    for path in [*(folder / "scripts").rglob("*.py"), *(folder / "configs").glob("*.json")]:
        assert "vivim_monai" not in path.read_text(), f"{path} still refers to the repository package"


def test_the_package_carries_the_released_models(packaged):
    folder, _ = packaged
    released = json.loads((REPO_ROOT / "bundle" / "models" / "released.json").read_text())
    assert released, "bundle/models/released.json lists no model"
    assert json.loads((folder / "models" / "released.json").read_text()) == released
    listing = (folder / "large_files.yml").read_text()
    for name, entry in released.items():
        copy = folder / entry["file"]
        assert file_digest(copy) == entry["sha256"], f"{name}: packaged weights differ from the released ones"
        assert (folder / entry["config"]).is_file(), f"{name}: its overlay {entry['config']} is not packaged"
        assert f'path: "{entry["file"]}"' in listing and entry["sha256"] in listing


def test_configs_are_the_source_configs_renamed(packaged):
    folder, _ = packaged
    for source in sorted((REPO_ROOT / "bundle" / "configs").glob("*.json")):
        packed = (folder / "configs" / source.name).read_text()
        assert json.loads(packed) == json.loads(source.read_text().replace("vivim_monai", "scripts")), source.name
        assert packed == json.dumps(json.loads(packed), indent=4, ensure_ascii=False) + "\n", "4-space JSON"


def test_zip_holds_the_folder_and_is_reproducible(packaged, tmp_path):
    folder, archive = packaged
    with zipfile.ZipFile(archive) as opened:
        names = sorted(opened.namelist())
        expected = sorted(f"{folder.name}/{Path(name).relative_to(folder).as_posix()}" for name in tree_digests(folder))
        assert names == expected
        inference = opened.read(f"{folder.name}/configs/inference.json")
    assert inference == (folder / "configs" / "inference.json").read_bytes()
    _, again = package_bundle.package(tmp_path)
    assert again.read_bytes() == archive.read_bytes(), "same sources give the same zip"


def test_existing_output_is_kept_unless_overwrite(packaged):
    folder, archive = packaged
    before = archive.read_bytes()
    with pytest.raises(SystemExit, match="exists; pass --overwrite"):
        package_bundle.package(folder.parent)
    assert archive.read_bytes() == before and (folder / "configs" / "metadata.json").is_file()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no staging folder left behind"


def test_large_weights_are_listed_in_large_files_yml(tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save({"model": {"w": torch.zeros(300_000)}}, weights)  # 1.2 MB
    folder, _ = package_bundle.package(tmp_path / "dist", weights=weights, weights_url="https://example.org/model.pt")
    listing = (folder / "large_files.yml").read_text()
    digest = file_digest(weights)
    assert 'path: "models/model.pt"' in listing and digest in listing and "https://example.org/model.pt" in listing
    checks = verify_bundle.Checks()
    verify_bundle.static_checks(folder, checks)
    assert checks.results["no file over 1 MB"]["passed"], "listed large files are allowed"
    (folder / "large_files.yml").unlink()
    checks = verify_bundle.Checks()
    verify_bundle.static_checks(folder, checks)
    assert not checks.results["no file over 1 MB"]["passed"], "an unlisted 1.2 MB file fails the check"


def test_static_zoo_checks_pass_and_catch_problems(packaged, tmp_path):
    folder, _ = packaged
    checks = verify_bundle.Checks()
    verify_bundle.static_checks(folder, checks)
    assert checks.passed, {k: v for k, v in checks.results.items() if not v["passed"]}
    broken = tmp_path / "broken"
    package_bundle.shutil.copytree(folder, broken)
    meta = json.loads((broken / "configs" / "metadata.json").read_text())
    meta["version"] = "9.9.9"
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    (broken / "scripts" / "extra.py").write_text("import vivim_monai\nx=1\n")
    checks = verify_bundle.Checks()
    verify_bundle.static_checks(broken, checks)
    failed = {name for name, result in checks.results.items() if not result["passed"]}
    assert {"version/changelog", "JSON 4-space", "self-contained code", "style: black"} <= failed


def test_packaged_configs_resolve_without_the_repository(packaged, tmp_path):
    """Every ``_target_`` of the packaged configs imports from ``scripts`` with ``vivim_monai`` made unimportable."""
    folder, _ = packaged
    blocker = tmp_path / "blocker" / "vivim_monai"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('the packaged bundle imported the repository package')\n")
    probe = (
        "import json, glob, re, importlib, sys\n"
        "targets = set()\n"
        "for f in glob.glob('configs/*.json'):\n"
        "    targets |= set(re.findall(r'\"(scripts(?:\\.\\w+)+)\"', open(f).read()))\n"
        "for t in sorted(targets):\n"
        "    module, _, name = t.rpartition('.')\n"
        "    getattr(importlib.import_module(module), name)\n"
        "assert not [m for m in sys.modules if m.startswith('vivim_monai')]\n"
        "print(len(targets))\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{folder}"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    source_targets = set()
    for config in (REPO_ROOT / "bundle" / "configs").glob("*.json"):
        source_targets |= set(re.findall(r'"vivim_monai((?:\.\w+)+)"', config.read_text()))
    assert int(done.stdout.split()[-1]) == len(source_targets) > 10, "every dotted path of the configs was imported"


@pytest.fixture(scope="module")
def zoo_checks(packaged, tmp_path_factory):
    """All zoo checks on the packaged bundle in a fresh virtual environment built from metadata.json alone."""
    folder, _ = packaged
    work = tmp_path_factory.mktemp("zoo")
    report = work / "zoo_checks.json"
    args = [str(folder), "--venv", str(work / "venv"), "--report", str(report)]
    if (SHARED_SCHEMAS / "meta_schema_20240725.json").is_file():
        args += ["--schema", str(SHARED_SCHEMAS / "meta_schema_20240725.json")]
    else:
        args += ["--schema", str(work / "absent_schema.json")]
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "verify_bundle.py"), *args],
        capture_output=True,
        text=True,
        timeout=1500,
    )
    if "clean venv from metadata pins" not in done.stdout:
        pytest.skip(f"could not build a clean environment from the package index:\n{done.stderr[-2000:]}")
    return json.loads(report.read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    "check",
    [
        "clean environment",
        "verify_net_in_out",
        "zoo unit test (train → evaluate → infer)",
        "ckpt_export (TorchScript)",
        "verify_metadata",
    ],
)
def test_zoo_runtime_checks_in_a_clean_venv(zoo_checks, check):
    if check == "verify_metadata" and not (SHARED_SCHEMAS / "meta_schema_20240725.json").is_file():
        pytest.skip(f"the metadata schema {SHARED_SCHEMAS / 'meta_schema_20240725.json'} is absent (offline check)")
    assert zoo_checks[check]["passed"], zoo_checks[check]["detail"]


def test_bundle_and_package_versions_agree():
    import vivim_monai

    meta = json.loads((REPO_ROOT / "bundle" / "configs" / "metadata.json").read_text())
    assert meta["version"] == vivim_monai.__version__ and meta["version"] in meta["changelog"]

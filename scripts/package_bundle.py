#!/usr/bin/env python
"""Package ``bundle/`` as a self-contained MONAI Model Zoo bundle folder and zip.

The zoo form is ``<name>/{configs, models, docs, scripts, LICENSE}``: the part of ``vivim_monai`` the configs need
(their dotted paths plus everything those modules import, found from the source with ``ast``) is copied into the
bundle's ``scripts`` package with every ``vivim_monai`` reference renamed ``scripts``, so the bundle runs with only
MONAI and the packages listed in ``metadata.json`` installed (Model Zoo convention: ``PYTHONPATH=<bundle>`` or run
from the bundle folder). Tests stay outside the bundle, as the Model Zoo keeps them in ``ci/unit_tests``: the
zoo-style unit test and the zoo checks are ``scripts/zoo_unit_test.py`` and ``scripts/verify_bundle.py``.

Weights (``--weights``) become ``models/model.pt``; the released models of ``bundle/models/released.json`` are
copied with it (their overlays are configs). Weight files larger than the zoo's 1 MB git limit are listed in
``large_files.yml`` (with their sha256 and, for ``model.pt``, ``--weights-url``), as the Model Zoo expects.

The folder is assembled under a temporary name next to the output and renamed into place; the zip is written
atomically. Nothing in ``bundle/`` is modified.

    python scripts/package_bundle.py --output dist [--weights runs/model.pt --weights-url https://...] [--overwrite]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "vivim_cine_segmentation"
PACKAGE = "vivim_monai"
VENDORED = "scripts"
MAX_FILE_BYTES = 1024 * 1024  # the Model Zoo's pre-commit `check-added-large-files --maxkb=1024`
_REFERENCE = re.compile(rf"\b{PACKAGE}((?:\.[A-Za-z_]\w*)*)")
_ZIP_DATE = (2024, 1, 1, 0, 0, 0)
_IGNORE_CACHES = shutil.ignore_patterns("__pycache__", "*.pyc")


def rename_package(text: str) -> str:
    """``vivim_monai`` → ``scripts`` in code, configs and docstrings (hyphenated ``vivim-monai`` stays)."""
    return re.sub(rf"\b{PACKAGE}\b", VENDORED, text)


def _module_path(source_root: Path, module: str) -> Path | None:
    """The file of ``module`` (``a.b`` → ``a/b.py`` or ``a/b/__init__.py``) under ``source_root``, if any."""
    base = source_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _longest_module(source_root: Path, dotted: str) -> str | None:
    """The longest prefix of ``dotted`` (``pkg.mod.Class.attr``) that is a module of the package."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        if _module_path(source_root, ".".join(parts[:end])) is not None:
            return ".".join(parts[:end])
    return None


def _imported_names(path: Path, module: str) -> set[str]:
    """Dotted names a module refers to: absolute and relative imports (also inside functions) and string mentions."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(PACKAGE + match.group(1) for match in _REFERENCE.finditer(node.value))
    return {name for name in names if name == PACKAGE or name.startswith(PACKAGE + ".")}


def _package_members(source_root: Path, package: str) -> set[str]:
    """The modules directly inside ``package`` (a folder with ``__init__.py``)."""
    folder = source_root.joinpath(*package.split("."))
    members = {f"{package}.{p.stem}" for p in folder.glob("*.py") if p.name != "__init__.py"}
    return members | {f"{package}.{p.parent.name}" for p in folder.glob("*/__init__.py")}


def import_closure(source_root: Path, references: set[str]) -> set[str]:
    """Every module reachable from ``references`` (dotted paths), with their parent packages.

    Whole subpackages are taken (every sibling of an included module): lazy loading such as ``vivim_monai.io``'s
    ``import_module(f"...{name}")`` is invisible to ``ast``; the top-level package keeps only what is reached.
    """
    pending = {m for m in (_longest_module(source_root, r) for r in references) if m}
    modules: set[str] = set()
    while pending:
        module = pending.pop()
        if module in modules:
            continue
        modules.add(module)
        parts = module.split(".")
        pending.update(".".join(parts[:end]) for end in range(1, len(parts)))
        if len(parts) > 1 and parts[:-1] != [PACKAGE]:
            pending.update(_package_members(source_root, ".".join(parts[:-1])))
        if (source_root.joinpath(*parts) / "__init__.py").is_file() and module != PACKAGE:
            pending.update(_package_members(source_root, module))
        for name in _imported_names(_module_path(source_root, module), module):
            found = _longest_module(source_root, name)
            if found and found not in modules:
                pending.add(found)
    return modules


def config_references(configs: Path) -> set[str]:
    """Dotted ``vivim_monai…`` paths used by the bundle's JSON configs."""
    refs: set[str] = set()
    for config in sorted(configs.glob("*.json")):
        refs.update(PACKAGE + match.group(1) for match in _REFERENCE.finditer(config.read_text(encoding="utf-8")))
    return refs


def vendor_package(source_root: Path, modules: set[str], destination: Path) -> list[str]:
    """Copy ``modules`` (and the non-Python files of their packages, e.g. C++ sources) renamed into ``destination``."""
    copied = []
    for module in sorted(modules):
        source = _module_path(source_root, module)
        relative = source.relative_to(source_root / PACKAGE)
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(rename_package(source.read_text(encoding="utf-8")), encoding="utf-8")
        copied.append(str(relative))
        if source.name == "__init__.py":
            for data in sorted(source.parent.iterdir()):
                if data.is_dir() and not (data / "__init__.py").exists() and data.name != "__pycache__":
                    shutil.copytree(data, destination / relative.parent / data.name, ignore=_IGNORE_CACHES)
                    copied.extend(
                        str(p.relative_to(source_root / PACKAGE)) for p in sorted(data.rglob("*")) if p.is_file()
                    )
    return copied


def write_config(source: Path, target: Path) -> None:
    """A JSON config with the package renamed, pretty-printed with 4 spaces (the zoo's ``pretty-format-json``)."""
    config = json.loads(rename_package(source.read_text(encoding="utf-8")))
    target.write_text(json.dumps(config, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def add_weights(bundle: Path, weights: Path) -> None:
    """Copy ``weights`` to ``models/model.pt``."""
    if not weights.is_file():
        raise SystemExit(f"{weights}: no such weights file")
    shutil.copyfile(weights, bundle / "models" / "model.pt")


def add_released_models(source_bundle: Path, bundle: Path) -> list[str]:
    """Copy the released weights listed in ``models/released.json`` (their overlays are among the configs)."""
    manifest = source_bundle / "models" / "released.json"
    if not manifest.is_file():
        return []
    shutil.copyfile(manifest, bundle / "models" / manifest.name)
    copied = []
    for name, entry in json.loads(manifest.read_text()).items():
        source = source_bundle / entry["file"]
        if not source.is_file():
            raise SystemExit(f"{source}: released model {name!r} is listed in {manifest} but its file is missing")
        shutil.copyfile(source, bundle / entry["file"])
        copied.append(entry["file"])
    return copied


def write_large_files(bundle: Path, urls: dict[str, str]) -> None:
    """List every weight file over the zoo's 1 MB git limit in ``large_files.yml`` (path, URL, sha256)."""
    large = sorted(p for p in (bundle / "models").glob("*.pt") if p.stat().st_size > MAX_FILE_BYTES)
    if not large:
        return
    lines = ["large_files:"]
    for path in large:
        relative = path.relative_to(bundle).as_posix()
        link = urls.get(relative) or f"<public direct download URL of {relative}>"
        lines += [f'  - path: "{relative}"', f'    url: "{link}"', f'    hash_val: "{sha256(path)}"']
        lines += ['    hash_type: "sha256"']
    (bundle / "large_files.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_bundle(source_bundle: Path, destination: Path, weights: Path | None = None, url: str | None = None) -> dict:
    """Assemble the zoo folder at ``destination`` (must not exist); returns what was vendored."""
    configs = source_bundle / "configs"
    modules = import_closure(REPO_ROOT, config_references(configs))
    destination.mkdir(parents=True)
    (destination / "configs").mkdir()
    for config in sorted(configs.iterdir()):
        if config.suffix == ".json":
            write_config(config, destination / "configs" / config.name)
        elif config.is_file():
            shutil.copyfile(config, destination / "configs" / config.name)
    shutil.copytree(source_bundle / "docs", destination / "docs", ignore=_IGNORE_CACHES)
    (destination / "models").mkdir()
    for model_file in (source_bundle / "models").glob("*.md"):
        shutil.copyfile(model_file, destination / "models" / model_file.name)
    shutil.copyfile(source_bundle / "LICENSE", destination / "LICENSE")
    files = vendor_package(REPO_ROOT, modules, destination / VENDORED)
    released = add_released_models(source_bundle, destination)
    if weights is not None:
        add_weights(destination, weights)
    write_large_files(destination, {"models/model.pt": url} if url else {})
    return {"modules": sorted(modules), "files": files, "released": released}


def write_zip(folder: Path, path: Path) -> None:
    """Deterministic zip (sorted names, fixed dates) with ``folder.name/`` as its top folder; written atomically."""
    from vivim_monai.utils import atomic_write  # the repository's writer; this script runs in the project environment

    def write(temporary: str) -> None:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(f"{folder.name}/{file.relative_to(folder).as_posix()}", date_time=_ZIP_DATE)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, file.read_bytes())

    atomic_write(path, write)


def package(
    output: Path,
    source_bundle: Path = REPO_ROOT / "bundle",
    weights: Path | None = None,
    weights_url: str | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Build ``output/<name>/`` and ``output/<name>_v<version>.zip``; returns both paths."""
    version = json.loads((source_bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))["version"]
    folder, archive = output / BUNDLE_NAME, output / f"{BUNDLE_NAME}_v{version}.zip"
    if not overwrite and (folder.exists() or archive.exists()):
        raise SystemExit(f"{folder if folder.exists() else archive} exists; pass --overwrite to replace it")
    output.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{BUNDLE_NAME}.", dir=output))
    try:
        build_bundle(source_bundle, staging / BUNDLE_NAME, weights, weights_url)
        write_zip(staging / BUNDLE_NAME, archive)
        if folder.exists():
            shutil.rmtree(folder)
        (staging / BUNDLE_NAME).rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder, archive


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path, help="folder for <name>/ and <name>_v<version>.zip")
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "bundle", help="source bundle (default: bundle/)")
    parser.add_argument("--weights", type=Path, help="checkpoint {'model': state_dict} to ship as models/model.pt")
    parser.add_argument("--weights-url", help="public direct URL of the weights, for large_files.yml (> 1 MB)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder / zip")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    folder, archive = package(
        args.output.resolve(), args.bundle.resolve(), args.weights, args.weights_url, args.overwrite
    )
    vendored = sorted(p.relative_to(folder).as_posix() for p in (folder / VENDORED).rglob("*.py"))
    print(f"bundle  {folder}  ({len(vendored)} vendored modules in {VENDORED}/)")
    print(f"zip     {archive}  ({archive.stat().st_size / 1e6:.2f} MB)")
    print(f"check   python scripts/verify_bundle.py {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

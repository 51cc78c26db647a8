"""Package structure: imports flow one way between the packages of ``vivim_monai`` (no cycle, none upward), and an
installed copy of the package does not depend on the repository around it."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "vivim_monai"
#: Layers, lowest first: a unit (subpackage or top-level module) imports only units of lower layers.
LAYERS: list[set[str]] = [
    {"<root>", "utils", "bundle_cli"},
    {"ops", "data", "metrics", "losses"},
    {"networks", "transforms", "io", "inferers"},
    {"engines", "fewshot"},
    {"handlers"},
    {"experiments", "demo", "export"},
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _unit(module: str) -> str:
    """The layer unit of a module: its subpackage or top-level module (``<root>`` for ``vivim_monai`` itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "<root>"


def _imports() -> dict[str, set[str]]:
    """Every module of the package -> the package modules it imports anywhere (also inside functions)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("vivim_monai"):
                for alias in node.names:  # "from pkg import module" names a module, else the package itself
                    submodule = f"{node.module}.{alias.name}"
                    targets.add(submodule if submodule in modules else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name.startswith("vivim_monai"))
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{path}: relative import; the package uses absolute imports only")
        graph[name] = {t for t in targets if t != name}
    return graph


def test_every_unit_has_a_layer():
    units = {_unit(m) for m in _imports()}
    placed = set().union(*LAYERS)
    assert units <= placed, f"add these to LAYERS: {sorted(units - placed)}"


def test_no_import_goes_upward_or_sideways():
    layer = {unit: i for i, units in enumerate(LAYERS) for unit in units}
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in _imports().items()
        for target in targets
        if _unit(target) != _unit(module) and layer[_unit(target)] >= layer[_unit(module)]
    )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycle_between_modules():
    graph = _imports()
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target) :] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_a_cycle(tmp_path, monkeypatch):
    """The cycle check above must fail on a package with one: two modules importing each other inside functions."""
    package = tmp_path / "vivim_monai"
    (package / "a").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a" / "__init__.py").write_text("")
    (package / "a" / "one.py").write_text("def f():\n    from vivim_monai.a.two import g\n")
    (package / "a" / "two.py").write_text("from vivim_monai.a import one\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    with pytest.raises(AssertionError, match=r"import cycle: vivim_monai\.a\.(one|two) -> "):
        test_no_import_cycle_between_modules()


@pytest.mark.integration
def test_an_installed_copy_needs_the_bundle_folder_passed(tmp_path):
    """A non-editable install has no ``bundle/`` beside the package: commands say what to pass instead of failing
    on a missing file, and work once the folder is given."""
    shutil.copytree(PACKAGE, tmp_path / "site" / "vivim_monai", ignore=shutil.ignore_patterns("__pycache__", "csrc"))
    env = {k: v for k, v in os.environ.items() if k != "VIVIM_BUNDLE_DIR"}
    env["PYTHONPATH"] = str(tmp_path / "site")
    probe = (
        "from vivim_monai.bundle_cli import find_bundle\n"
        "try:\n    find_bundle()\nexcept FileNotFoundError as err:\n    print('ERROR', err)\n"
        f"print('FOUND', find_bundle({str(REPO_ROOT / 'bundle')!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    error, found = result.stdout.splitlines()
    assert "no configs/train.json" in error and "--bundle" in error and "VIVIM_BUNDLE_DIR" in error, error
    assert str(tmp_path / "site") in error, "the message names the folder it looked in"
    assert found == f"FOUND {REPO_ROOT / 'bundle'}"
    demo = subprocess.run(
        [sys.executable, "-m", "vivim_monai.demo", "--output", str(tmp_path / "out")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode != 0 and "VIVIM_BUNDLE_DIR" in demo.stderr, demo.stderr[-2000:]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), "nothing written before failing"

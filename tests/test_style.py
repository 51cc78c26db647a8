"""black, isort and flake8 at 120 columns over the project's Python code (the Model Zoo's format checks)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

TARGETS = ["vivim_monai", "tests", "scripts"]


@pytest.mark.parametrize(
    "tool, args",
    [("black", ["--check", "--quiet"]), ("isort", ["--check-only", "--quiet"]), ("flake8", [])],
)
def test_code_style(tool, args):
    if importlib.util.find_spec(tool) is None:
        pytest.skip(f"{tool} is not installed (requirements-dev.txt)")
    result = subprocess.run(
        [sys.executable, "-m", tool, *args, *TARGETS], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"{tool} found problems:\n{result.stdout}\n{result.stderr}"

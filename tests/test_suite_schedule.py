"""The suite's parallel schedule (scripts/test.sh, tests/conftest.py) names existing files and is the one used."""

from __future__ import annotations

import re

from conftest import LONGEST_FILES, REPO_ROOT, SAME_WORKER


def test_scheduled_files_exist_and_appear_once():
    tests = REPO_ROOT / "tests"
    assert len(set(LONGEST_FILES)) == len(LONGEST_FILES)
    missing = [name for name in LONGEST_FILES if not (tests / name).is_file()]
    missing += [path for pair in SAME_WORKER.items() for path in pair if not (REPO_ROOT / path).is_file()]
    assert not missing, f"renamed or removed test files still scheduled: {missing}"


def test_test_script_keeps_files_whole_and_in_collection_order():
    script = (REPO_ROOT / "scripts" / "test.sh").read_text()
    command = next(line for line in script.splitlines() if line.startswith("exec ") and "pytest" in line)
    assert re.search(r"--dist loadfile\b", command) and "--no-loadscope-reorder" in command, command
    pins = (REPO_ROOT / "requirements-dev.txt").read_text().splitlines()
    assert any(line.startswith("pytest-xdist==") for line in pins), "scripts/test.sh needs pytest-xdist"

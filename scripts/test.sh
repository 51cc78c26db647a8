#!/usr/bin/env bash
# Set up .venv with the test tools (and, as root, the DICOM validator dciodvfy: see setup_env.sh) and run the whole
# test suite (what CI runs).
# Extra arguments go to pytest: -m quick is the fast tier (markers in pyproject.toml); -n 0 runs in one process.
# The suite runs in parallel (pytest-xdist): one worker per core, at most 4, each test file whole on one worker (its
# module fixtures are built once), the longest files first (tests/conftest.py: LONGEST_FILES, SAME_WORKER), and the
# cores shared out as OpenMP/torch threads per worker. VIVIM_TEST_WORKERS and OMP_NUM_THREADS override both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --dev
cores=$(nproc)
workers=${VIVIM_TEST_WORKERS:-$((cores < 4 ? cores : 4))}
if [ "$workers" -gt 0 ]; then
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((cores / workers > 0 ? cores / workers : 1))}
fi
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"

#!/usr/bin/env bash
# Set up .venv with the test tools (and, as root, the DICOM validator dciodvfy: see setup_env.sh) and run the whole
# test suite (what CI runs).
# Extra arguments go to pytest: -m quick is the fast tier (under 3 minutes on 2 cores; markers in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --dev
exec .venv/bin/python -m pytest "$@"

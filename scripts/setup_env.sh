#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install vivim-monai into it.
#   bash scripts/setup_env.sh          runtime requirements (requirements.txt)
#   bash scripts/setup_env.sh --dev    runtime + test/style tools (requirements-dev.txt)
# Re-running is cheap: the install is skipped when the requirement files have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.vivim-installed-$(cat "$requirements" requirements.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first, exactly pinned: on machines with a local CPU wheel this avoids the multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "$(grep -E '^torch==' requirements.txt)"
    .venv/bin/python -m pip install --quiet -r "$requirements" -e .
    touch "$stamp"
fi

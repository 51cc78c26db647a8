#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded default (Vivim on pydicom's real echo cine).
# Extra arguments go to `python -m vivim_monai.demo` (e.g. --variant b3 --backend torch).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m vivim_monai.demo "$@"

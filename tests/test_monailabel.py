"""Serving the packaged bundle from MONAI Label 0.8.5 (``monaibundle`` app) on loopback, end to end.

The slow test builds (or reuses) the isolated environment of ``scripts/setup_monailabel.sh`` (numpy<2, pydicom<3)
and skips, with the reason, when it cannot be built (e.g. no package index). It packages the bundle with
``scripts/package_bundle.py`` and a seeded random-init checkpoint -- it checks serving, not accuracy -- starts the
server with ``scripts/serve_monailabel.py`` on a free 127.0.0.1 port, checks ``/info/``, POSTs a NIfTI H x W x T cine
and a multi-frame DICOM cine (phantoms made here, no shared data), checks that each label is H x W x T of class
indices and equals the bundle's own inference in this environment, runs a bounded request loop (count and time)
that also checks the server keeps answering, and always stops the server, verifying its PID is gone. Cached: about
2 minutes on 2 CPU cores; the first run also builds the environment and compiles the bundle's CPU kernel.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_script

SCRIPTS = REPO_ROOT / "scripts"
VENV = Path(os.environ.get("VIVIM_MONAILABEL_VENV", REPO_ROOT / ".venv-monailabel"))
CONFIGS = REPO_ROOT / "bundle" / "configs"
MODEL = "vivim_cine_segmentation"  # the packaged bundle's folder name, served under that name
LOOP_REQUESTS, LOOP_SECONDS = 5, 120.0
FRAMES = 7  # more than the clip length (5): the sliding clip inferer runs two windows


serve = load_script("serve_monailabel")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _channel_def() -> dict[int, str]:
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    return {int(k): v for k, v in meta["network_data_format"]["outputs"]["pred"]["channel_def"].items()}


def _write_cines(folder: Path) -> dict[str, Path]:
    """A greyscale NIfTI H x W x T (time last) and a multi-frame DICOM (Ultrasound Multi-frame) phantom cine."""
    from vivim_monai.data import make_phantom, write_phantom_case

    folder.mkdir(parents=True, exist_ok=True)
    phantom = make_phantom(seed=2, num_frames=FRAMES, height=112, width=144)
    nifti = folder / "cine_volume.nii.gz"
    nib.save(nib.Nifti1Image(phantom.image, np.diag([0.4, 0.4, 1.0, 1.0])), nifti)
    dicom = Path(write_phantom_case(folder, "cine_dicom", seed=1, num_frames=FRAMES, height=96, width=128)["image"])
    return {"nifti": nifti, "dicom": dicom}


def _input_shape(path: Path) -> tuple[int, int, int]:
    from vivim_monai.data import load_cine

    return tuple(load_cine(path).shape[1:])


def _bundle_prediction(weights: Path, image: Path) -> np.ndarray:
    """The bundle's own inference in this environment (numpy 2, pydicom 3): preprocessing, inferer, postprocessing."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["device"] = "cpu"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(weights, map_location="cpu")["model"])
    network.eval()
    data = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    data = parser.get_parsed_content("postprocessing")(data)
    return np.asarray(data["pred"][0])


@pytest.fixture(scope="module")
def monailabel_venv() -> Path:
    env = {**os.environ, "VIVIM_MONAILABEL_VENV": str(VENV)}
    try:
        result = subprocess.run(
            ["bash", str(SCRIPTS / "setup_monailabel.sh")], capture_output=True, text=True, env=env, timeout=900
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"the MONAI Label environment could not be built: {err}")
    if result.returncode != 0:
        reason = " | ".join((result.stdout + result.stderr).strip().splitlines()[-4:])
        pytest.skip(f"the MONAI Label environment could not be built (scripts/setup_monailabel.sh): {reason}")
    return VENV


def _serve(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPTS / "serve_monailabel.py"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def server(monailabel_venv, tmp_path_factory):
    """The packaged bundle served on a free loopback port; stopped (and checked gone) at the end.

    The package and the server's work folder live at a fixed place in the environment (``<venv>/serve-test``), not
    in a fresh temporary folder: torch caches the bundle's compiled CPU kernel by its source path, so a fixed path
    compiles it once (about a minute on 2 cores) instead of at every run.
    """
    from monai.bundle import ConfigParser

    root, cache = tmp_path_factory.mktemp("monailabel"), monailabel_venv / "serve-test"
    workdir = cache / "work"
    _serve("stop", "--workdir", str(workdir), "--venv", str(monailabel_venv))  # left by an interrupted run
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    weights = root / "model.pt"
    torch.save({"model": parser.get_parsed_content("network_def").state_dict()}, weights)
    packaged = subprocess.run(
        [sys.executable, str(SCRIPTS / "package_bundle.py"), "--output", str(cache / "dist"), "--weights", str(weights)]
        + ["--overwrite"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
    started = time.perf_counter()
    launched = _serve(
        "start",
        "--bundle",
        str(cache / "dist" / MODEL),
        "--studies",
        str(root / "studies"),
        "--port",
        str(_free_port()),
        "--workdir",
        str(workdir),
        "--venv",
        str(monailabel_venv),
        "--timeout",
        "240",
    )
    startup = time.perf_counter() - started
    state = serve._read_state(workdir)
    try:
        assert launched.returncode == 0, launched.stdout + launched.stderr
        info = json.loads(launched.stdout.strip().splitlines()[-1])
        yield {**info, "workdir": workdir, "weights": weights, "startup_s": startup}
    finally:
        state = state or serve._read_state(workdir)
        stopped = _serve("stop", "--workdir", str(workdir), "--venv", str(monailabel_venv), timeout=120)
        if state is not None:
            pid = int(state["pid"])
            if serve.process_alive(pid):  # last resort, still only the recorded server's own process group
                os.killpg(int(state.get("pgid", pid)), signal.SIGKILL)
            assert stopped.returncode == 0, stopped.stdout + stopped.stderr
            assert not serve.process_alive(pid), f"server pid {pid} is still running after stop"
            assert not (workdir / serve.PID_FILE).exists()


def _check_label(path_or_bytes, expected_shape: tuple[int, int, int], classes: set[int], tmp: Path) -> np.ndarray:
    if isinstance(path_or_bytes, bytes):
        target = tmp / f"label_{time.monotonic_ns()}.nii.gz"
        target.write_bytes(path_or_bytes)
        path_or_bytes = target
    label = np.asarray(nib.load(path_or_bytes).dataobj)
    assert label.shape == expected_shape, f"label {label.shape} != input H x W x T {expected_shape}"
    assert label.dtype == np.uint8
    assert set(np.unique(label).tolist()) <= classes
    return label


def test_pydicom2_fallbacks_match_pydicom3():
    """The reader's local MPEG transfer syntax list (for pydicom 2.4) equals pydicom 3's."""
    from pydicom.uid import MPEGTransferSyntaxes

    from vivim_monai.data import dicom

    assert dicom._MPEG_TRANSFER_SYNTAXES == {str(uid) for uid in MPEGTransferSyntaxes}


@pytest.mark.slow
def test_monailabel_serves_cines_as_hwt_labels(server, tmp_path):
    channel_def = _channel_def()
    classes = set(channel_def)
    info = serve.server_info(server["url"])
    assert info is not None
    model = info["models"][MODEL]
    assert model["labels"] == {name.lower(): index for index, name in channel_def.items() if index != 0}
    assert model["dimension"] == 3 and model["type"] == "segmentation"

    cines = _write_cines(tmp_path / "cines")
    latencies = {}
    for kind, path in cines.items():
        output = tmp_path / f"{kind}_seg.nii.gz"
        result = _serve("infer", str(path), "--output", str(output), "--workdir", str(server["workdir"]))
        assert result.returncode == 0, result.stdout + result.stderr
        latencies[kind] = json.loads(result.stdout.strip().splitlines()[-1])["seconds"]
        shape = _input_shape(path)
        assert shape[-1] == FRAMES
        served = _check_label(output, shape, classes, tmp_path)
        reference = _bundle_prediction(server["weights"], path)
        assert reference.shape == served.shape
        agreement = float(np.mean(reference == served))
        assert agreement >= 0.999, f"{kind}: MONAI Label and the bundle's own inference agree on {agreement:.4%}"

    loop, started = [], time.monotonic()
    inputs = list(cines.values())
    while len(loop) < LOOP_REQUESTS and time.monotonic() - started < LOOP_SECONDS:
        path = inputs[len(loop) % len(inputs)]
        label, result, seconds = serve.request_inference(server["url"], MODEL, path, timeout=300)
        assert label is not None, result
        _check_label(label, _input_shape(path), classes, tmp_path)
        assert serve.server_info(server["url"]) is not None, "the server stopped answering /info/"
        loop.append(round(seconds, 2))
    assert loop, "no request of the loop ran within its time budget"
    print(f"\nMONAI Label: startup {server['startup_s']:.1f} s, first requests {latencies}, loop {loop} s")

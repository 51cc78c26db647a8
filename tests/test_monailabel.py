"""Serving the packaged bundle from MONAI Label 0.8.5 (``monaibundle`` app) on loopback, end to end.

The slow test builds (or reuses) the isolated environment of ``scripts/setup_monailabel.sh`` (numpy<2, pydicom<3)
and skips, with the reason, when it cannot be built (e.g. no package index). It packages the bundle with
``scripts/package_bundle.py`` and a seeded random-init checkpoint -- it checks serving, not accuracy -- starts the
server with ``scripts/serve_monailabel.py`` on a free 127.0.0.1 port, checks ``/info/``, POSTs a NIfTI H x W x T cine
and a multi-frame DICOM cine (phantoms made here, no shared data), checks that each label is H x W x T of class
indices and equals the bundle's own inference in this environment, runs a bounded request loop (count and time)
that also checks the server keeps answering, and always stops the server, verifying its PID is gone. Cached: about
2 minutes on 2 CPU cores; the first run also builds the environment and compiles the bundle's CPU kernel.

The bad-input test POSTs 50 seeded fuzzed DICOM cines (``tests/fuzzing.py``, mutants the reader rejects) and 10 kinds
of non-DICOM file: each must be answered 422 with the reader's ``CineReadError`` naming the uploaded file and the
problem, ``/info/`` must answer after each, the datastore and the server's temporary folder must be left as they were,
and the server's resident memory (its process group, sampled) must stay under ``RSS_BOUND``; a valid cine must then
still segment as the bundle does. Under a minute more.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections import Counter
from io import BytesIO
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import MONAILABEL_VENV as VENV
from conftest import REPO_ROOT, load_script
from fuzzing import MUTATIONS, make_seed, rejected_mutants, set_raw
from PIL import Image

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

SCRIPTS = REPO_ROOT / "scripts"
CONFIGS = REPO_ROOT / "bundle" / "configs"
MODEL = "vivim_cine_segmentation"  # the packaged bundle's folder name, served under that name
LOOP_REQUESTS, LOOP_SECONDS = 5, 120.0
FRAMES = 7  # more than the clip length (5): the sliding clip inferer runs two windows
FUZZED_CINES, FUZZ_SEED = 50, 0
REQUEST_TIMEOUT_S, BAD_INPUT_BUDGET_S = 120.0, 900.0  # each bad request; all 60 of them
RSS_BOUND = 4 << 30  # the server's process group, bytes


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
        yield {
            **info,
            "workdir": workdir,
            "weights": weights,
            "startup_s": startup,
            "studies": root / "studies",
            "pgid": int(state["pgid"]),
        }
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


def test_frames_beyond_the_stated_count_are_refused(tmp_path):
    """pydicom 2.4 (the server's) decodes such cines as their first frame(s); the reader refuses them by name."""
    import pydicom
    from pydicom import examples

    from vivim_monai.data import CineReadError, load_cine, write_phantom_case

    native = pydicom.dcmread(
        write_phantom_case(tmp_path, "phantom", seed=0, num_frames=6, height=32, width=48)["image"]
    )
    set_raw(native, "NumberOfFrames", "IS", b"")
    native.save_as(tmp_path / "empty_frames.dcm")
    with pytest.raises(CineReadError, match=r"empty_frames\.dcm: NumberOfFrames=1 but .* holds 6 frames"):
        load_cine(tmp_path / "empty_frames.dcm")
    jpeg = pydicom.dcmread(examples.get_path("ybr_color"))
    del jpeg.NumberOfFrames
    jpeg.save_as(tmp_path / "no_frames.dcm")
    with pytest.raises(CineReadError, match=r"no_frames\.dcm: NumberOfFrames is missing .* holds 30 fragments"):
        load_cine(tmp_path / "no_frames.dcm")


def test_non_dicom_files_are_refused_by_name(tmp_path):
    """The reader's side of the bad-input test below, without a server."""
    from vivim_monai.data import CineReadError, load_cine

    cine = _write_cines(tmp_path / "cines")["dicom"]
    for name, (path, message) in _non_dicom_files(tmp_path / "files", cine).items():
        with pytest.raises(CineReadError) as refused:
            load_cine(path)
        assert str(refused.value).startswith(f"{path}: ") and message in str(refused.value), name


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


# ---- bad input -----------------------------------------------------------------------------------------------------


class GroupRss:
    """Peak resident memory (VmRSS summed over a process group, from /proc), sampled in a thread every ``interval``."""

    def __init__(self, pgid: int, interval: float = 0.25) -> None:
        self.pgid, self.interval, self.peak, self.samples = pgid, interval, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> int:
        total = 0
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                if int(Path(entry.path, "stat").read_text().rpartition(")")[2].split()[2]) != self.pgid:
                    continue
                status = Path(entry.path, "status").read_text().splitlines()
                total += sum(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))
            except (OSError, ValueError, IndexError):  # the process ended meanwhile
                continue
        return total

    @staticmethod
    def high_water_mark(pid: int) -> int:
        """The largest resident size ``pid`` has had (VmHWM), in bytes."""
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return sum(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak, self.samples = max(self.peak, self.sample()), self.samples + 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "GroupRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def _fuzzed_cines(folder: Path) -> tuple[list[dict[str, str]], Counter]:
    """``FUZZED_CINES`` seeded mutants of the phantom and pydicom's ``ybr_color`` that the reader rejects."""
    from pydicom import examples

    from vivim_monai.data import write_phantom_case

    phantom = Path(write_phantom_case(folder / "src", "phantom", seed=0, num_frames=6, height=64, width=64)["image"])
    seeds = [
        make_seed("phantom.dcm", phantom.read_bytes()),
        make_seed("ybr_color.dcm", Path(examples.get_path("ybr_color")).read_bytes()),
    ]
    return rejected_mutants(seeds, FUZZED_CINES, folder / "cases", seed=FUZZ_SEED)


def _huge_header_nifti(path: Path) -> bytes:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), path)
    data = bytearray(path.read_bytes())
    data[40:48] = np.array([3, 30000, 30000, 3000], "<i2").tobytes()  # dim[0..3]: a 10 TB volume in 320 bytes
    return bytes(data)


def _non_dicom_files(folder: Path, cine: Path) -> dict[str, tuple[Path, str]]:
    """Ten kinds of file that are not a readable cine, by descriptive name: (path, what the error must say)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    png, archive = BytesIO(), BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 80), dtype=np.uint8)).save(png, format="PNG")
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.write(cine, cine.name)
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 3, 2), np.float32), np.eye(4)), folder / "four_d_volume.nii.gz")
    contents = {
        "empty.dcm": (b"", "empty file (0 bytes)"),
        "random_bytes.dcm": (rng.bytes(64 << 10), "no 'DICM' marker after the 128-byte preamble"),
        "png_image_named.dcm": (png.getvalue(), "no 'DICM' marker after the 128-byte preamble"),
        "notes.txt": (b"not a cine\n" * 100, "unsupported file type"),
        "truncated_preamble.dcm": (cine.read_bytes()[:100], "100 bytes, shorter than the 128-byte preamble"),
        "cine_in_archive.zip": (archive.getvalue(), "unsupported file type"),
        "four_d_volume.nii.gz": ((folder / "four_d_volume.nii.gz").read_bytes(), "found 4 axes"),
        "request.json": (json.dumps({"image": cine.name, "frames": FRAMES}).encode(), "unsupported file type"),
        "huge_header_fake.nii": (_huge_header_nifti(folder / "huge.nii"), "over MAX_DECODED_BYTES"),
        "truncated_frame.png": (png.getvalue()[:60], "unreadable frame image"),
    }
    files = {}
    for name, (data, message) in contents.items():
        (folder / name).write_bytes(data)
        files[name] = (folder / name, message)
    return files


def _tree(folder: Path) -> dict[str, int]:
    """``{relative path: size}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _settled(folder: Path, expected: dict[str, int], seconds: float = 5.0) -> dict[str, int]:
    """The tree of ``folder`` once it equals ``expected`` (the server removes uploads after answering), or after
    ``seconds``."""
    deadline = time.monotonic() + seconds
    while (tree := _tree(folder)) != expected and time.monotonic() < deadline:
        time.sleep(0.05)
    return tree


def _post(url: str, path: Path) -> tuple[int, str, float]:
    """(HTTP status, error detail or a note on the label, seconds) of POSTing ``path`` for inference."""
    tick = time.perf_counter()
    try:
        label, result, _ = serve.request_inference(url, MODEL, path, timeout=REQUEST_TIMEOUT_S)
    except serve.InferenceError as err:
        return err.status, err.detail, time.perf_counter() - tick
    return 200, f"served: a {len(label or b'')}-byte label, {json.dumps(result)[:200]}", time.perf_counter() - tick


@pytest.mark.slow
def test_monailabel_bad_input_is_refused_by_name(server, tmp_path):
    """60 bad uploads: 422 naming the file and the problem, server up, nothing written, memory bounded."""
    url, channel_def = server["url"], _channel_def()
    valid = _write_cines(tmp_path / "cines")["dicom"]
    mutants, drawn = _fuzzed_cines(tmp_path / "fuzz")
    assert len(mutants) == FUZZED_CINES, drawn
    bad = [(Path(m["file"]), m["message"].replace(m["file"], Path(m["file"]).name), m["kind"]) for m in mutants]
    for name, (path, message) in _non_dicom_files(tmp_path / "non_dicom", valid).items():
        bad.append((path, message, name))
    studies, temporary = server["studies"], server["workdir"] / serve.TMP_DIR
    datastore, scratch = _tree(studies), _tree(temporary)
    records, started = [], time.monotonic()
    with GroupRss(server["pgid"]) as rss:
        baseline, hwm_before = rss.sample(), rss.high_water_mark(server["pid"])
        for path, expected, kind in bad:
            assert time.monotonic() - started < BAD_INPUT_BUDGET_S, f"budget spent after {len(records)} requests"
            status, detail, seconds = _post(url, path)
            record = {"file": path.name, "kind": kind, "status": status, "s": round(seconds, 3), "detail": detail}
            if kind in MUTATIONS:  # the reader's message in the project's environment (pydicom 3) vs the server's
                record["same_as_local"] = detail[: len(expected)] == expected[: len(detail)]
            named = detail.startswith(f"CineReadError: {path.name}: ") and (kind in MUTATIONS or expected in detail)
            record["ok"] = status == 422 and named
            records.append(record)
            assert serve.server_info(url) is not None, f"/info/ stopped answering after {path.name}"
            assert _tree(studies) == datastore, f"the datastore changed after {path.name}"
            assert _settled(temporary, scratch) == scratch, f"files left in the server's temporary folder: {path.name}"
        bad_peak, hwm_bad = rss.peak, rss.high_water_mark(server["pid"])
        # a valid cine still segments as the bundle does
        label, result, valid_s = serve.request_inference(url, MODEL, valid, timeout=600)
        assert label is not None, result
        served = _check_label(label, _input_shape(valid), set(channel_def), tmp_path)
        agreement = float(np.mean(_bundle_prediction(server["weights"], valid) == served))
        hwm_end = rss.high_water_mark(server["pid"])
    latencies = [r["s"] for r in records]
    summary = {
        "requests": len(records),
        "statuses": dict(Counter(r["status"] for r in records)),
        "fuzz_draws": dict(drawn),
        "fuzz_same_message_as_local": sum(bool(r.get("same_as_local")) for r in records),
        "latency_s": {"median": round(statistics.median(latencies), 3), "max": max(latencies)},
        "rss_gib": {  # sampled: the server's process group every 0.25 s; hwm: the server process's own peak
            "before": round(baseline / 2**30, 3),
            "sampled_peak_bad_input": round(bad_peak / 2**30, 3),
            "sampled_peak_with_valid": round(rss.peak / 2**30, 3),
            "samples": rss.samples,
            "hwm_before": round(hwm_before / 2**30, 3),
            "hwm_after_bad_input": round(hwm_bad / 2**30, 3),
            "hwm_after_valid": round(hwm_end / 2**30, 3),
        },
        "valid": {"seconds": round(valid_s, 2), "agreement": agreement, "shape": list(served.shape)},
        "bad_input_wall_s": round(time.monotonic() - started, 1),
        "records": records,
    }
    (tmp_path / "bad_input_summary.json").write_text(json.dumps(summary, indent=1))
    print("\nMONAI Label bad input:", json.dumps({k: v for k, v in summary.items() if k != "records"}))
    unclear = [r for r in records if not r["ok"]]
    assert not unclear, f"{len(unclear)} bad inputs not refused with 422 naming the file and problem: {unclear[:5]}"
    assert agreement >= 0.999, f"after bad input, MONAI Label and the bundle agree on {agreement:.4%}"
    peak = max(rss.peak, hwm_end)
    assert peak < RSS_BOUND, f"peak RSS {peak / 2**30:.2f} GiB over {RSS_BOUND / 2**30:.0f} GiB"

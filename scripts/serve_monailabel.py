#!/usr/bin/env python
"""Serve the packaged bundle from MONAI Label 0.8.5 (the project's app) on loopback, offline; stop it by its PID.

Standard library only, so any Python runs it; the server itself runs in the isolated environment made by
``scripts/setup_monailabel.sh`` (numpy<2, pydicom<3, no sam2). MONAI Label serves the *packaged* bundle
(``scripts/package_bundle.py``: configs + models/model.pt + the vendored ``scripts`` package), never the repository.

    bash scripts/setup_monailabel.sh
    python scripts/package_bundle.py --output dist --weights model.pt
    python scripts/serve_monailabel.py start --bundle dist/vivim_cine_segmentation --studies studies [--port 8123]
    python scripts/serve_monailabel.py infer cine.dcm [--output cine_seg.nii.gz]
    python scripts/serve_monailabel.py status
    python scripts/serve_monailabel.py stop

``start`` copies the project's MONAI Label app (``monailabel_app/main.py``: the bundle's automatic model as the
``monaibundle`` sample app serves it, plus the interactive model ``<name>_interactive`` -- boxes or clicks and the
frames labelled so far in the datastore -> the whole cine -- and its train task) into the work folder, links the
bundle as ``<app>/model/<name>``, launches ``monailabel start_server`` on
127.0.0.1 in its own process group with the offline settings (``zoo_source github`` reads the local bundle folder
instead of listing the hosted zoo, ``sam2 false`` skips the SAM2 download, ``skip_trainers true`` for the bundle's
own trainer,
``HF_HUB_OFFLINE=1``, experiment tracking off), writes the PID file and returns once ``GET /info/`` answers 200.
The server runs MONAI Label's FastAPI app through a small module written to the work folder
(:data:`APP_MODULE_SOURCE`): a failed inference or label save is answered with its reason (422 for an unreadable
upload, JSON ``{"detail": "CineReadError: <uploaded name>: <problem>"}``; 400 for a bad prompt or label, or params
that are not JSON) instead of MONAI Label's bare 500 "Internal Server Error", and the uploaded copy is still
removed. The server's temporary files (uploads, results) go to
``<workdir>/tmp``, emptied at each start.
``stop`` signals only the process group recorded in the PID file, after checking that the PID still is that
server, waits for it to end and removes the file.

Cines are H x W x T volumes (NIfTI/NRRD/MHA, greyscale, or RGB as 3-component vector pixels; index axes rows,
columns, frames: time last) or multi-frame DICOM; the label that comes back is a NIfTI H x W x T of class indices
(0 background, then the bundle's ``channel_def``) in the input's geometry.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = REPO_ROOT / ".venv-monailabel"
DEFAULT_PORT = 8123
HOST = "127.0.0.1"
APP_NAME = "vivim"
#: The MONAI Label app served (automatic model, interactive model, its train task): monailabel_app/main.py
APP_SOURCE = REPO_ROOT / "monailabel_app"
PID_FILE = "server.json"
LOG_FILE = "server.log"
#: Server settings: nothing fetched from the network, no experiment tracking, DICOM files accepted in the datastore.
SERVER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "BUNDLE_DOWNLOAD_SRC": "github",
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    "MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(["*.nii.gz", "*.nii", "*.nrrd", "*.dcm"]),
    "PYTHONNOUSERSITE": "1",
}
#: ``--conf`` pairs of ``monailabel start_server`` (``models`` is added from the bundle's name).
SERVER_CONF = {"zoo_source": "github", "sam2": "false", "skip_trainers": "true", "preload": "false"}
#: Inference parameters: CPU unless asked otherwise, and a NIfTI label also for DICOM input (the default writer would
#: try a DICOM label through ITK and fail), stored as uint8 class indices.
INFER_PARAMS = {"device": "cpu", "result_extension": ".nii.gz", "result_dtype": "uint8"}
TMP_DIR = "tmp"
APP_MODULE = "vivim_monailabel_app"
#: The module uvicorn serves (``--uvicorn_app vivim_monailabel_app:app``), written to the work folder at each start.
APP_MODULE_SOURCE = '''"""MONAI Label's app, failed requests answered with their reason (from serve_monailabel.py).

MONAI Label 0.8.5 lets an exception raised during inference (e.g. the bundle's CineReadError for an unreadable
upload) reach Starlette, which answers 500 "Internal Server Error" with the reason only in the server log, and drops
the request's background tasks, so the uploaded copy stays in the temporary folder. The /infer endpoint's function is
wrapped here: a failure is answered as JSON {"detail": "<error>: <message>"}, 422 for an unreadable input (a
CineReadError anywhere in the exception chain), 400 for an invalid request (a PromptError, params that are not JSON,
MONAILabelException INVALID_INPUT, e.g. an unknown model), the HTTPException's own status, else 500. PUT
/datastore/label is wrapped the same way (the app's datastore refuses a label that does not fit its image). The
upload's temporary path in the message is replaced by the name it was uploaded under, and the background tasks
(removing the upload) still run.
"""

import logging

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from monailabel.app import app  # noqa: F401  (what uvicorn serves)
from monailabel.endpoints import datastore as _datastore
from monailabel.endpoints import infer as _infer
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

_logger = logging.getLogger(__name__)
_run_inference = _infer.run_inference


def _chain(err):
    chain = []
    while err is not None and all(err is not seen for seen in chain):
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _describe(err):
    """(HTTP status, message) for a failed request."""
    for item in _chain(err):
        names = [cls.__name__ for cls in type(item).__mro__]
        if "CineReadError" in names:
            return 422, f"CineReadError: {item}"
        if "PromptError" in names:
            return 400, f"PromptError: {item}"
        if "JSONDecodeError" in names:
            return 400, f"params is not JSON: {item}"
    if isinstance(err, HTTPException):
        return err.status_code, str(err.detail)
    if isinstance(err, MONAILabelException):
        return (400 if err.error == MONAILabelError.INVALID_INPUT else 500), f"{err.error.value}: {err.msg}"
    return 500, f"{type(err).__name__}: {err}"


def run_inference(background_tasks, model, image="", session_id="", params="{}", file=None, label=None, output=None):
    try:
        return _run_inference(background_tasks, model, image, session_id, params, file, label, output)
    except Exception as err:
        status, message = _describe(err)
        temporary = [task.args[0] for task in background_tasks.tasks if task.args]  # remove_file(upload copy)
        for path, upload in zip(temporary, [upload for upload in (file, label) if upload is not None]):
            message = message.replace(str(path), upload.filename or "upload")
        level = logging.WARNING if status < 500 else logging.ERROR
        _logger.log(level, "infer %s: HTTP %d: %s", model, status, message, exc_info=status >= 500)
        return JSONResponse({"detail": message}, status_code=status, background=background_tasks)


_infer.run_inference = run_inference
_save_label = _datastore.save_label


def save_label(background_tasks, image, params="{}", tag="final", label=None, user=None):
    try:
        return _save_label(background_tasks, image, params, tag, label, user)
    except Exception as err:
        status, message = _describe(err)
        temporary = [task.args[0] for task in background_tasks.tasks if task.args]
        for path in temporary:
            message = message.replace(str(path), (label.filename if label is not None else "") or "label upload")
        level = logging.WARNING if status < 500 else logging.ERROR
        _logger.log(level, "save label %s: HTTP %d: %s", image, status, message, exc_info=status >= 500)
        return JSONResponse({"detail": message}, status_code=status, background=background_tasks)


_datastore.save_label = save_label
'''


def default_workdir(venv: Path) -> Path:
    return venv / "serve"


def _read_state(workdir: Path) -> dict | None:
    try:
        return json.loads((workdir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None


def _load_project_module(relative: str) -> Any:
    """A standard-library-only module of the project loaded from its file, so this script stays runnable by any Python
    without the package installed."""
    source = Path(__file__).resolve().parents[1] / relative
    spec = importlib.util.spec_from_file_location("_vivim_monai_" + source.stem, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_atomic_write = _load_project_module("vivim_monai/utils/atomic.py").atomic_write
#: the HTTP client (``vivim_monai.utils.monailabel_client``): its names are this script's too
client = _load_project_module("vivim_monai/utils/monailabel_client.py")
InferenceError, http_get, server_info = client.InferenceError, client.http_get, client.server_info


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (no partial file at ``path``, whatever happens)."""
    _atomic_write(path, lambda name: Path(name).write_bytes(data))


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, which only waits to be reaped, counts as ended)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


def _is_our_server(state: dict) -> bool:
    """The recorded PID is alive and still the server this script started (guards against PID reuse)."""
    pid = int(state["pid"])
    if not process_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return True  # no /proc: trust the PID file
    return "start_server" in cmdline and state["app"] in cmdline


def _log_tail(workdir: Path, lines: int = 40) -> str:
    try:
        return "\n".join((workdir / LOG_FILE).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


def ensure_app(workdir: Path) -> Path:
    """The project's MONAI Label app (``monailabel_app/``) copied to ``workdir/apps/vivim`` (its code replaced at
    each start; ``model/``, with the bundle links and the interactive model's trained weights, kept)."""
    app = workdir / "apps" / APP_NAME
    app.mkdir(parents=True, exist_ok=True)
    for source in sorted(APP_SOURCE.glob("*.py")):
        _write_atomic(app / source.name, source.read_bytes())
    return app


def link_bundle(app: Path, bundle: Path, name: str) -> Path:
    """``<app>/model/<name>`` -> ``bundle`` (a symbolic link; replaced when it points elsewhere)."""
    target = app / "model" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink():
        target.unlink()
    elif target.exists():
        raise SystemExit(f"{target} exists and is not a link; remove it or choose another --model name")
    target.symlink_to(bundle, target_is_directory=True)
    return target


def _monailabel(venv: Path) -> list[str]:
    """``python -m monailabel.main`` of the environment: its ``bin/monailabel`` wrapper is a shell script that puts
    the folder two levels above ``bin`` (here the repository) on PYTHONPATH and runs whatever ``python`` is first on
    PATH, which would break the isolation."""
    return [str(venv / "bin" / "python"), "-m", "monailabel.main"]


def warm_bundle_kernels(venv: Path, model_dir: Path, workdir: Path) -> None:
    """Build (or load) the bundle's compiled CPU scan kernel before the server starts, so that the first request
    does not pay for the compilation (about a minute on 2 cores). torch caches the build by the source's path, so it
    is imported from ``model_dir`` exactly as the server will (through the app's model link). Failing is not fatal:
    the bundle then falls back to its pure-PyTorch scan."""
    if not (model_dir / "scripts" / "ops" / "cpu_kernel.py").is_file():
        return
    env = {**_server_env(venv, workdir), "PYTHONPATH": str(model_dir)}
    code = "import scripts.ops.cpu_kernel as k; print('cpu scan kernel available:', k.is_available())"
    with open(workdir / LOG_FILE, "ab") as log:
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env
        )


def _server_env(venv: Path, workdir: Path) -> dict:
    """The caller's environment without Python path settings, plus :data:`SERVER_ENV`, the session folder, the
    temporary folder ``<workdir>/tmp`` and a torch extension cache of the environment's own (the bundle's CPU scan
    kernel is compiled against that torch; sharing ``~/.cache/torch_extensions`` with another environment would
    rebuild it back and forth)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(SERVER_ENV)
    env["MONAI_LABEL_SESSION_PATH"] = str(workdir / "sessions")
    env["TMPDIR"] = str(workdir / TMP_DIR)
    env["TORCH_EXTENSIONS_DIR"] = str(venv / "torch_extensions")
    return env


def start(args: argparse.Namespace) -> int:
    venv, workdir = args.venv.resolve(), (args.workdir or default_workdir(args.venv)).resolve()
    bundle, studies = args.bundle.resolve(), args.studies.resolve()
    if not (venv / "bin" / "python").is_file():
        raise SystemExit(f"{venv}: no monailabel; run `bash scripts/setup_monailabel.sh` first")
    if not (bundle / "configs" / "inference.json").is_file() or not (bundle / "configs" / "metadata.json").is_file():
        raise SystemExit(f"{bundle}: not a bundle (configs/inference.json and configs/metadata.json needed)")
    if not (bundle / "models" / "model.pt").is_file() and not (bundle / "models" / "model.ts").is_file():
        raise SystemExit(f"{bundle}: MONAI Label needs models/model.pt (or model.ts); package with --weights")
    workdir.mkdir(parents=True, exist_ok=True)
    state = _read_state(workdir)
    if state is not None:
        if _is_our_server(state):
            raise SystemExit(f"a server is already running (pid {state['pid']}, {state['url']}); stop it first")
        (workdir / PID_FILE).unlink()
    (workdir / LOG_FILE).write_bytes(b"")  # the log of this server only
    shutil.rmtree(workdir / TMP_DIR, ignore_errors=True)  # left by an earlier server of this work folder
    (workdir / TMP_DIR).mkdir()
    _write_atomic(workdir / f"{APP_MODULE}.py", APP_MODULE_SOURCE.encode())
    studies.mkdir(parents=True, exist_ok=True)
    name = args.model or bundle.name
    app = ensure_app(workdir)
    warm_bundle_kernels(venv, link_bundle(app, bundle, name), workdir)
    conf = {**SERVER_CONF, "models": name, **dict(args.conf or [])}
    command = [*_monailabel(venv), "start_server", "--app", str(app), "--studies", str(studies)]
    command += ["--host", HOST, "--port", str(args.port), "--uvicorn_app", f"{APP_MODULE}:app"]
    for key, value in conf.items():
        command += ["--conf", key, value]
    url = f"http://{HOST}:{args.port}"
    with open(workdir / LOG_FILE, "ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
            env=_server_env(venv, workdir),
            start_new_session=True,
        )
    state = {"pid": process.pid, "pgid": process.pid, "url": url, "model": name, "app": str(app), "bundle": str(bundle)}
    _write_atomic(workdir / PID_FILE, json.dumps(state, indent=4).encode())
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (workdir / PID_FILE).unlink(missing_ok=True)
            print(_log_tail(workdir), file=sys.stderr)
            raise SystemExit(f"the server exited with code {process.returncode}; log: {workdir / LOG_FILE}")
        info = server_info(url, timeout=2.0)
        if info is not None:
            if name not in info.get("models", {}):
                _stop(workdir, state)
                print(_log_tail(workdir), file=sys.stderr)
                raise SystemExit(
                    f"the server runs but has no model {name!r} (models: {sorted(info.get('models', {}))})"
                )
            print(json.dumps({"url": url, "pid": process.pid, "model": name, "log": str(workdir / LOG_FILE)}))
            return 0
        time.sleep(1.0)
    _stop(workdir, state)
    print(_log_tail(workdir), file=sys.stderr)
    raise SystemExit(f"the server did not answer {url}/info/ within {args.timeout:.0f} s; stopped it")


def _stop(workdir: Path, state: dict, timeout: float = 30.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL it after ``timeout``; True when the server PID has ended."""
    pid, pgid = int(state["pid"]), int(state.get("pgid", state["pid"]))
    if _is_our_server(state):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not process_alive(pid):
                break
    gone = not process_alive(pid)
    if gone:
        (workdir / PID_FILE).unlink(missing_ok=True)
    return gone


def stop(args: argparse.Namespace) -> int:
    workdir = (args.workdir or default_workdir(args.venv)).resolve()
    state = _read_state(workdir)
    if state is None:
        print(f"no server recorded in {workdir / PID_FILE}")
        return 0
    if not _stop(workdir, state, args.timeout):
        raise SystemExit(f"server pid {state['pid']} did not end")
    print(json.dumps({"stopped": state["pid"]}))
    return 0


def status(args: argparse.Namespace) -> int:
    workdir = (args.workdir or default_workdir(args.venv)).resolve()
    state = _read_state(workdir)
    if state is None or not _is_our_server(state):
        print(json.dumps({"running": False}))
        return 1
    info = server_info(state["url"])
    summary = {"running": True, "answering": info is not None, **state}
    if info is not None:
        summary["models"] = {
            k: {"labels": v.get("labels"), "dimension": v.get("dimension")} for k, v in info["models"].items()
        }
    print(json.dumps(summary))
    return 0 if info is not None else 2


def request_inference(
    url: str, model: str, image: Path, params: dict | None = None, timeout: float = 600.0
) -> tuple[bytes | None, dict, float]:
    """POST a cine file to ``/infer/<model>`` with :data:`INFER_PARAMS` under ``params``; returns (label file bytes
    or None, result JSON, seconds). An HTTP error raises :class:`InferenceError` with the status and the reason."""
    return client.request_inference(url, model, image, {**INFER_PARAMS, **(params or {})}, timeout)


def _default_output(image: Path) -> Path:
    stem = image.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm", ".dicom"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return Path.cwd() / f"{stem}_seg.nii.gz"


def infer(args: argparse.Namespace) -> int:
    workdir = (args.workdir or default_workdir(args.venv)).resolve()
    state = _read_state(workdir) or {}
    url = args.url or state.get("url") or f"http://{HOST}:{DEFAULT_PORT}"
    model = args.model or state.get("model")
    if not model:
        raise SystemExit("no --model given and no running server recorded")
    try:
        label, result, seconds = request_inference(url, model, args.image, {"device": args.device}, args.timeout)
    except InferenceError as err:
        raise SystemExit(f"the server refused {args.image} (HTTP {err.status}): {err.detail}") from err
    if label is None:
        raise SystemExit(f"the server returned no label: {json.dumps(result)[:2000]}")
    output = (args.output or _default_output(args.image)).resolve()
    _write_atomic(output, label)
    summary = {"output": str(output), "seconds": round(seconds, 3), "label_names": result.get("label_names")}
    summary["server_latencies"] = {k: v for k, v in result.get("latencies", {}).items() if k != "transform"}
    print(json.dumps(summary))
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="environment of setup_monailabel.sh")
    common.add_argument("--workdir", type=Path, help="app copy, PID file and log (default: <venv>/serve)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("start", parents=[common], help="start the server and wait until it answers")
    run.add_argument("--bundle", type=Path, required=True, help="packaged bundle folder (with models/model.pt)")
    run.add_argument("--studies", type=Path, required=True, help="datastore folder (created when missing)")
    run.add_argument("--port", type=int, default=DEFAULT_PORT)
    run.add_argument("--model", help="model name on the server (default: the bundle folder's name)")
    run.add_argument("--conf", nargs=2, action="append", metavar=("KEY", "VALUE"), help="extra app --conf pair")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for GET /info/")
    halt = commands.add_parser("stop", parents=[common], help="stop the server recorded in the PID file")
    halt.add_argument("--timeout", type=float, default=30.0, help="seconds before SIGKILL")
    commands.add_parser("status", parents=[common], help="exit 0 when the recorded server answers /info/")
    send = commands.add_parser("infer", parents=[common], help="POST a cine and write the returned label")
    send.add_argument("image", type=Path, help="NIfTI/NRRD H x W x T cine or multi-frame DICOM")
    send.add_argument("--output", type=Path, help="label file (default: ./<name>_seg.nii.gz)")
    send.add_argument("--url", help="server URL (default: the recorded server)")
    send.add_argument("--model", help="model name (default: the recorded server's)")
    send.add_argument("--device", default="cpu")
    send.add_argument("--timeout", type=float, default=600.0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return {"start": start, "stop": stop, "status": status, "infer": infer}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())

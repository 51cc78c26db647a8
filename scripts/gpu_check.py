"""GPU check of vivim-monai: the ``cuda`` scan backend, AMP training, evaluation on the GPU and frames/s vs the paper.

    python scripts/gpu_check.py --out DIR [--budget 540] [--steps NAME ...]
    bash scripts/gpu_check.sh                 # the same after setting up the environment (see that file)

Every step returns a record ``{"step", "status": "passed" | "failed" | "skipped", "reason", "seconds", "figures"}``.
A failing step never stops the others, and the steps left when the time budget is spent are skipped, saying so:

1. ``install_cuda_extra`` requirements-cuda.txt as pip installs it (pinned wheels, or a carried ``--wheels`` folder);
   if that fails, its exact error is kept and the source archives are built for this GPU's architecture only,
   bounded in time. If that fails too, the remaining steps go on with the ``torch`` backend on the GPU.
2. ``environment``: GPU, driver, CUDA, torch, and the mamba-ssm / causal-conv1d versions or their import errors.
3. ``scan_parity``: ``selective_scan`` and ``causal_conv1d``, ``cuda`` against ``torch`` backend: outputs and the
   gradients of every input, scan orders forward / reverse / temporal, fp32 and bf16.
4. ``vivim_parity``: the whole tiny Vivim, ``cuda`` against ``torch`` backend.
5. ``train_default``: the bundle's default network (``network_def`` of train.json) trained on phantom cines through
   ``monai.bundle run`` with AMP on the GPU; the loss per iteration (TensorBoard events) must be finite and fall.
   Without CUDA the same run at a tiny size on the CPU proves the plumbing.
6. ``train_vivim_b3``: the same for ``configs/vivim_b3.json``.
7. ``evaluate``: train.json + evaluate.json on step 5's checkpoint with the metric handlers on the GPU, and Dice /
   Jaccard computed on GPU tensors against the CPU.
8. ``throughput``: inference frames/s of a 1x3x256x256x5 clip, default network and Vivim-b3, fp32 and bf16
   autocast, ``cuda`` and ``torch`` scan backends, against the paper's 35.33 FPS on an RTX 4090.

``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` are rewritten atomically after every step, so a killed run still
leaves its results. Without CUDA the CUDA steps are skipped ("no CUDA device") and the exit status is 0: a non-zero
status means that the checker itself broke.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
PAPER_FPS = 35.33  # Vivim's inference speed in the paper, RTX 4090, 256 x 256 frames
PAPER_GPU = "RTX 4090"
NO_CUDA = "no CUDA device"
TITLE = "vivim-monai GPU check"
#: import statements that need each package's compiled CUDA extension (what the ``cuda`` backend imports)
KERNEL_IMPORTS = {
    "mamba-ssm": "from mamba_ssm.ops.selective_scan_interface import selective_scan_fn",
    "causal-conv1d": "from causal_conv1d import causal_conv1d_fn",
}
FORCE_BUILD_ENV = {"mamba-ssm": "MAMBA_FORCE_BUILD", "causal-conv1d": "CAUSAL_CONV1D_FORCE_BUILD"}
SKIP_BUILD_ENV = {"mamba-ssm": "MAMBA_SKIP_CUDA_BUILD", "causal-conv1d": "CAUSAL_CONV1D_SKIP_CUDA_BUILD"}
MAX_RETURNED_FILE = 16 * 2**20  # the device tool brings back files up to 16 MiB


# ------------------------------------------------------------------------------------------------ settings, records
@dataclass
class Settings:
    """What to run and at which sizes; :func:`default_settings` shrinks the training sizes on a CPU machine."""

    out: Path
    work: Path
    cuda: bool
    budget: float = 540.0
    steps: tuple[str, ...] = ()
    wheels: Path | None = None
    prebuilt_timeout: float = 120.0
    build_timeout: float = 300.0
    reserve: float = 240.0  # seconds of the budget the install keeps for the steps after it
    repeats: int = 10
    fps_size: int = 256
    fps_frames: int = 5
    parity_dim: int = 128
    parity_side: int = 16
    parity_frames: int = 5
    cases: int = 6
    frames: int = 10
    folds: int = 3
    phantom_height: int = 192
    phantom_width: int = 256
    train_size: int = 128
    epochs: int = 3
    batch_size: int = 2
    max_numerosity: int = 2
    learning_rate: float = 1e-3


def default_settings(out: Path, work: Path, cuda: bool, **overrides: Any) -> Settings:
    """GPU sizes take seconds per training run on a GPU; the CPU dry run uses tiny ones (the plumbing only)."""
    tiny = {} if cuda else {"cases": 3, "frames": 6, "phantom_height": 48, "phantom_width": 64, "train_size": 32}
    if not cuda:
        tiny.update(epochs=1, batch_size=1, max_numerosity=1)
    return Settings(out=out, work=work, cuda=cuda, **{**tiny, **overrides})


class StepFailed(Exception):
    """A step's check did not hold: ``reason`` says why, ``figures`` keeps what was measured."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason, self.figures = reason, figures or {}


class StepSkipped(StepFailed):
    """A step that could not run here (its precondition is missing); not a failure of what it checks."""


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[["Check"], tuple[str, dict[str, Any]]]
    needs_cuda: bool
    summary: str


@dataclass
class Check:
    """The state of one run: settings, time budget, records so far and what steps hand to later ones."""

    settings: Settings
    started: float = field(default_factory=time.monotonic)
    records: list[dict[str, Any]] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return torch.device("cuda:0" if self.settings.cuda else "cpu")

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        return self.settings.budget - self.elapsed()


def make_record(step: str, status: str, reason: str, seconds: float, figures: dict[str, Any]) -> dict[str, Any]:
    return {"step": step, "status": status, "reason": reason, "seconds": round(seconds, 2), "figures": figures}


def run_step(check: Check, step: Step) -> dict[str, Any]:
    """One step as a record; exceptions become a failed record (with the traceback's tail), never propagate."""
    start = time.monotonic()
    settings = check.settings
    if settings.steps and step.name not in settings.steps and step.name != "environment":  # machine facts: always
        return make_record(step.name, "skipped", "not selected (--steps)", 0.0, {})
    if check.remaining() <= 0:
        reason = f"time budget of {settings.budget:.0f} s used up ({check.elapsed():.0f} s elapsed) before this step"
        return make_record(step.name, "skipped", reason, 0.0, {})
    if step.needs_cuda and not settings.cuda:
        return make_record(step.name, "skipped", NO_CUDA, 0.0, {})
    try:
        reason, figures = step.run(check)
        status = "passed"
    except StepSkipped as skipped:
        status, reason, figures = "skipped", skipped.reason, skipped.figures
    except StepFailed as failed:
        status, reason, figures = "failed", failed.reason, failed.figures
    except Exception as error:  # noqa: BLE001 - a step's crash is its failure, the other steps still run
        status, reason = "failed", f"{type(error).__name__}: {error}"
        figures = {"traceback": traceback.format_exc(limit=8)[-3000:]}
    return make_record(step.name, status, reason, time.monotonic() - start, figures)


# ------------------------------------------------------------------------------------------------ small utilities
def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to a temporary file in ``path``'s folder, then rename it over ``path`` (never half-written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


@dataclass
class Outcome:
    """A finished (or killed) subprocess: exit status, wall time, whether the deadline killed it, its log."""

    returncode: int
    seconds: float
    timed_out: bool
    log: Path

    def tail(self, lines: int = 20, chars: int = 2500) -> str:
        text = self.log.read_text(errors="replace") if self.log.is_file() else ""
        return "\n".join(text.splitlines()[-lines:])[-chars:]


class Bounded:
    """A subprocess in its own process group, output to ``log``, killed with all its children at the deadline."""

    def __init__(self, command: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log, self.start = log, time.monotonic()
        with open(log, "w") as stream:
            stream.write("$ " + " ".join(map(str, command)) + "\n")
            stream.flush()
            self.process = subprocess.Popen(
                list(map(str, command)),
                stdout=stream,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,  # its own group: a timeout also ends nvcc / ninja / the bundle's workers
            )

    def finish(self, deadline: float) -> Outcome:
        """Wait until ``deadline`` (a ``time.monotonic()`` value), then kill the process group."""
        timed_out = False
        try:
            self.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            timed_out = True
            self._kill_group()
        return Outcome(self.process.returncode, time.monotonic() - self.start, timed_out, self.log)

    def _kill_group(self) -> None:
        """SIGTERM, then SIGKILL, to the whole group; returns once every member is gone (not only the leader: a
        grandchild that outlives or ignores SIGTERM is still killed), or after 5 s of grace per signal."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            grace_ends = time.monotonic() + 5.0
            while time.monotonic() < grace_ends:
                self.process.poll()  # reap the leader, so only live (or unreaped) members keep the group
                try:
                    os.killpg(self.process.pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)
        self.process.poll()


def run_bounded(command: Sequence[str], log: Path, timeout: float, env: dict[str, str] | None = None) -> Outcome:
    return Bounded(command, log, env).finish(time.monotonic() + max(0.0, timeout))


#: pip's own wrapping of a failed build: never the error itself
PIP_NOISE = re.compile(
    r"^(×|│|╰─>|note:|hint:|full command:|cwd:|Preparing metadata|Building wheel|Failed to build|ERROR: Failed"
    r"|error: (subprocess-exited-with-error|metadata-generation-failed|failed-wheel-build-for-install))"
)
PYTHON_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b(:|$)")


def last_error_line(text: str) -> str:
    """The most telling line of a failed command's output: the last Python exception, else the last line naming an
    error (a compiler's, say), else the last line; pip's wrapping lines are passed over."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not PIP_NOISE.match(line.strip())]
    for pattern in (PYTHON_EXCEPTION, re.compile(r"error|not found|no matching|timed out", re.IGNORECASE)):
        for line in reversed(lines):
            if pattern.search(line):
                return line[:400]
    return lines[-1][:400] if lines else ""


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """max |value - reference| / max |reference| in float64 (inf when non-finite): one number for any magnitude."""
    value, reference = value.detach().double(), reference.detach().double()
    if not (torch.isfinite(value).all() and torch.isfinite(reference).all()):
        return math.inf
    scale = reference.abs().max().item() or 1.0
    return (value - reference).abs().max().item() / scale


def benchmark_module() -> ModuleType:
    """``scripts/benchmark.py`` (its ``time_call`` and ``network_from_overlay``), imported by path."""
    spec = importlib.util.spec_from_file_location("vivim_benchmark", REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_pins(path: Path) -> list[tuple[str, str]]:
    """``name==version`` lines of a requirements file, in order."""
    pins = []
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9._-]+)==([^\s#;]+)", line)
        if match:
            pins.append((match[1], match[2]))
    return pins


# ------------------------------------------------------------------------------------------- machine and kernels
def probe_kernel_package(name: str, timeout: float = 180.0) -> dict[str, str]:
    """``{"version"}`` when ``name``'s CUDA extension imports (fresh interpreter), else ``{"error"}``: the exception."""
    code = f"import importlib.metadata as m\n{KERNEL_IMPORTS[name]}\nprint(m.version({name!r}))"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"import timed out after {timeout:.0f} s"}
    if done.returncode == 0:
        return {"version": done.stdout.strip().splitlines()[-1]}
    return {"error": last_error_line(done.stderr) or f"exit status {done.returncode}"}


def gpu_driver() -> str:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "nvidia-smi not available"


def basic_machine() -> dict[str, Any]:
    """What costs nothing to read: Python, torch, CUDA runtime, GPU name and memory."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "interpreter": sys.executable,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cudnn=torch.backends.cudnn.version(),
        )
    return info


def kernel_status(check: Check) -> dict[str, dict[str, str]]:
    status = {name: probe_kernel_package(name) for name in KERNEL_IMPORTS}
    check.machine["kernels"] = status
    return status


def refresh_cuda_kernels() -> None:
    """Forget the cached mamba-ssm / causal-conv1d lookup after an install in this process."""
    importlib.invalidate_caches()
    from vivim_monai.ops import backends

    backends.cuda_kernels.cache_clear()


def cuda_backend_reason() -> str:
    """'' when the ``cuda`` backend can run CUDA tensors here, else why not."""
    from vivim_monai.ops import available_backends
    from vivim_monai.ops.backends import cuda_kernels

    if not torch.cuda.is_available():
        return NO_CUDA
    return "" if "cuda" in available_backends("cuda") else cuda_kernels()[2]


# ------------------------------------------------------------------------------------------- 1. install_cuda_extra
GENCODE = re.compile(
    r'^(?P<indent>[ \t]*)cc_flag\.append\("-gencode"\)\n'
    r'[ \t]*cc_flag\.append\("arch=compute_(?P<arch>\w+),code=sm_\w+"\)\n',
    re.MULTILINE,
)


def restrict_gencode(setup_py: str, arch: str) -> tuple[str, int]:
    """mamba-ssm / causal-conv1d ``setup.py`` compiling for ``sm_<arch>`` only (their list has up to 9 targets, far
    too slow for a bounded build); dropped pairs become ``pass`` so no ``if`` is left empty. Unchanged when
    ``arch`` is not in the list. Returns the text and how many targets were kept."""
    kept = 0

    def keep_or_drop(match: re.Match[str]) -> str:
        nonlocal kept
        if match["arch"] == arch:
            kept += 1
            return match[0]
        return f"{match['indent']}pass  # gpu_check: built for sm_{arch} only\n"

    patched = GENCODE.sub(keep_or_drop, setup_py)
    return (patched, kept) if kept else (setup_py, 0)


def find_sdist(folder: Path | None, name: str, version: str) -> Path | None:
    if folder is None or not folder.is_dir():
        return None
    for stem in {name.replace("-", "_"), name}:
        candidate = folder / f"{stem}-{version}.tar.gz"
        if candidate.is_file():
            return candidate
    return None


def unpack_sdist(archive: Path, dest: Path) -> Path:
    """The source tree of ``archive`` under ``dest`` (its single top-level folder)."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters
            tar.extractall(dest)  # noqa: S202 - an archive we downloaded ourselves
    (root,) = [p for p in dest.iterdir() if p.is_dir()]
    return root


class CudaExtraInstaller:
    """requirements-cuda.txt, bounded: the pinned packages as pip gets them, then a one-architecture source build.

    Offline (a ``--wheels`` folder: carried wheels and source archives) every pip call has ``--no-index --no-deps``;
    otherwise pip uses the registry and installs the packages' declared dependencies too.
    """

    def __init__(self, check: Check) -> None:
        self.check, self.settings = check, check.settings
        self.offline = bool(
            self.settings.wheels and self.settings.wheels.is_dir() and any(self.settings.wheels.iterdir())
        )
        self.site = os.environ.get("GPU_CHECK_SITE") or None  # where the wrapper put our packages beside a system torch
        self.folder = self.settings.work / "cuda_extra"
        self.attempts: list[dict[str, Any]] = []

    def pip(self, verb: str, *args: str) -> list[str]:
        command = [sys.executable, "-m", "pip", verb, "--no-build-isolation", "--retries", "0", "--timeout", "20"]
        if self.offline:
            command += ["--no-index", "--find-links", str(self.settings.wheels), "--no-deps"]
        elif verb == "wheel":
            command += ["--no-deps"]
        if verb == "install" and self.site:
            command += ["--target", self.site, "--upgrade"]
        return command + list(args)

    def build_env(self, name: str | None = None, arch: str | None = None) -> dict[str, str]:
        env = dict(os.environ, MAX_JOBS=str(os.cpu_count() or 4))
        if name is not None:
            env[FORCE_BUILD_ENV[name]] = "TRUE"
        if arch is not None:
            env["TORCH_CUDA_ARCH_LIST"] = f"{arch[:-1]}.{arch[-1]}"
        return env

    def deadline(self, cap: float) -> tuple[float, float]:
        """(deadline, seconds): ``cap`` or what the budget leaves after keeping ``reserve`` for later steps."""
        seconds = min(cap, self.check.remaining() - self.settings.reserve)
        return time.monotonic() + seconds, seconds

    def wheel_jobs(self, label: str, jobs: dict[str, tuple[list[str], dict[str, str]]], cap: float) -> list[str]:
        """Run ``pip wheel`` jobs side by side until the deadline, install what they built; returns the installed."""
        deadline, seconds = self.deadline(cap)
        if seconds < min(20.0, cap):  # not worth starting
            for name in jobs:
                self.attempts.append(
                    {"package": name, "attempt": label, "status": "not run", "error": "no time left in the budget"}
                )
            return []
        running = {
            name: Bounded(command, self.folder / f"{name}-{label.split()[0]}.log", env)
            for name, (command, env) in jobs.items()
        }
        installed = []
        for name, job in running.items():
            outcome = job.finish(deadline)
            wheels = sorted((self.folder / "wheels" / name).glob("*.whl"))
            attempt: dict[str, Any] = {
                "package": name,
                "attempt": label,
                "seconds": round(outcome.seconds, 1),
                "returncode": outcome.returncode,
            }
            text = outcome.log.read_text(errors="replace")
            url = re.findall(r"Guessing wheel URL:\s*(\S+)", text)
            if url:
                attempt["wheel_url"] = url[-1]
            if outcome.timed_out:
                attempt.update(status="timed out", error=f"killed after {seconds:.0f} s (bounded)")
            elif outcome.returncode != 0 or not wheels:
                attempt.update(status="failed", error=last_error_line(text))
            else:
                done = run_bounded(self.pip("install", str(wheels[-1])), self.folder / f"{name}-install.log", 180)
                if done.returncode == 0:
                    attempt.update(status="installed", wheel=wheels[-1].name)
                    installed.append(name)
                else:
                    attempt.update(
                        status="failed", error="pip install of the built wheel: " + last_error_line(done.tail())
                    )
            if attempt["status"] != "installed":
                attempt["tail"] = outcome.tail()
            self.attempts.append(attempt)
        return installed

    def only_source_carried(self, name: str, version: str) -> bool:
        """Offline, a carried source archive and no wheel: the pinned attempt is an all-architecture build."""
        if not self.offline or find_sdist(self.settings.wheels, name, version) is None:
            return False
        stem = name.replace("-", "_")
        return not any(self.settings.wheels.glob(f"{stem}-{version}-*.whl"))

    def sdist(self, name: str, version: str) -> Path:
        found = find_sdist(self.settings.wheels, name, version)
        if found is not None:
            return found
        dest = self.folder / "sdist"
        env = dict(os.environ, **{SKIP_BUILD_ENV[name]: "TRUE"})  # metadata only: no CUDA compile just to download
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation"]
        outcome = run_bounded(
            command + ["-d", str(dest), f"{name}=={version}"], self.folder / f"{name}-sdist.log", 90, env
        )
        found = find_sdist(dest, name, version)
        if found is None:
            raise RuntimeError(f"no source archive of {name}=={version}: {last_error_line(outcome.tail())}")
        return found

    def source_jobs(self, missing: list[tuple[str, str]], arch: str) -> dict[str, tuple[list[str], dict[str, str]]]:
        jobs = {}
        for name, version in missing:
            try:
                root = unpack_sdist(self.sdist(name, version), self.folder / "src" / name)
            except Exception as error:  # noqa: BLE001 - recorded, the other package still builds
                self.attempts.append(
                    {"package": name, "attempt": "source build", "status": "failed", "error": str(error)}
                )
                continue
            setup = root / "setup.py"
            patched, kept = restrict_gencode(setup.read_text(), arch)
            setup.write_text(patched)
            self.attempts.append(
                {
                    "package": name,
                    "attempt": "source build",
                    "status": "prepared",
                    "targets": f"sm_{arch} only" if kept else "setup.py's own list (sm_{arch} not found in it)",
                }
            )
            wheel_dir = self.folder / "wheels" / name
            jobs[name] = (
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "wheel",
                    "-v",
                    "--no-deps",
                    "--no-build-isolation",
                    "-w",
                    str(wheel_dir),
                    str(root),
                ],
                self.build_env(name, arch),
            )
        return jobs

    def run(self) -> tuple[list[str], dict[str, Any]]:
        pins = read_pins(REPO / "requirements-cuda.txt")
        before = {name: probe_kernel_package(name) for name, _ in pins}
        missing = [(name, version) for name, version in pins if "version" not in before.get(name, {})]
        figures: dict[str, Any] = {
            "mode": "offline, carried folder" if self.offline else "package registry",
            "before": before,
        }
        if not missing:
            return [], figures
        figures["ninja"] = shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None
        figures["nvcc"] = shutil.which("nvcc") or "not on PATH"
        jobs = {
            name: (
                self.pip("wheel", "-v", "-w", str(self.folder / "wheels" / name), f"{name}=={version}"),
                self.build_env(),
            )
            for name, version in missing
            if not self.only_source_carried(name, version)
        }
        for name, version in missing:
            if name not in jobs:
                self.attempts.append(
                    {
                        "package": name,
                        "attempt": "pinned wheel",
                        "status": "not run",
                        "error": "offline with only its source archive carried: pip would build every architecture",
                    }
                )
        # offline, setup.py's own lookup of a prebuilt wheel (a GitHub download) can only fail: fast when the name does
        # not resolve, but a blocked connection hangs, so it gets less time there
        cap = min(self.settings.prebuilt_timeout, 45.0) if self.offline else self.settings.prebuilt_timeout
        installed = self.wheel_jobs("pinned wheel", jobs, cap)
        missing = [(name, version) for name, version in missing if name not in installed]
        if missing:
            major, minor = torch.cuda.get_device_capability()
            arch = f"{major}{minor}"
            figures["build_arch"] = f"sm_{arch}"
            jobs = self.source_jobs(missing, arch)
            if jobs:
                installed += self.wheel_jobs(f"source build sm_{arch}", jobs, self.settings.build_timeout)
            self.return_built_wheels()
        return [name for name, _ in missing if name not in installed], figures

    def return_built_wheels(self) -> None:
        """Copy the wheels built here into ``out/wheels`` (if small enough to come back): carried next time, a rerun
        installs them in seconds instead of building."""
        for wheel in (self.folder / "wheels").glob("*/*.whl"):
            if wheel.stat().st_size <= MAX_RETURNED_FILE:
                (self.settings.out / "wheels").mkdir(parents=True, exist_ok=True)
                shutil.copy2(wheel, self.settings.out / "wheels" / wheel.name)

    def write_log(self) -> None:
        """``out/install_cuda.log``: the head and tail of every pip call's output."""
        parts = []
        for log in sorted(self.folder.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            excerpt = lines if len(lines) <= 200 else lines[:40] + [f"... {len(lines) - 190} lines ..."] + lines[-150:]
            parts.append(f"===== {log.name}\n" + "\n".join(excerpt))
        if parts:
            atomic_write_text(self.settings.out / "install_cuda.log", "\n\n".join(parts) + "\n")


def step_install_cuda_extra(check: Check) -> tuple[str, dict[str, Any]]:
    installer = CudaExtraInstaller(check)
    try:
        still_missing, figures = installer.run()
    finally:
        installer.write_log()
    refresh_cuda_kernels()
    figures["attempts"] = installer.attempts
    figures["after"] = kernel_status(check)
    if not installer.attempts and not still_missing:
        return "mamba-ssm and causal-conv1d already importable", figures
    broken = [name for name, probe in figures["after"].items() if "error" in probe]
    if broken:
        errors = "; ".join(
            f"{a['package']} {a['attempt']}: {a.get('status')} ({a.get('error', '')})"
            for a in installer.attempts
            if a.get("status") not in ("installed", "prepared")
        )
        raise StepFailed(
            f"{', '.join(broken)} not importable after install; the other steps use the torch backend on the GPU. "
            + errors,
            figures,
        )
    return "installed: " + ", ".join(f"{name} {probe['version']}" for name, probe in figures["after"].items()), figures


# ------------------------------------------------------------------------------------------------ 2. environment
def step_environment(check: Check) -> tuple[str, dict[str, Any]]:
    from vivim_monai.ops import available_backends

    info = dict(check.machine)
    if check.settings.cuda:
        info["driver"] = gpu_driver()
        nvcc = shutil.which("nvcc")
        if nvcc:
            done = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30)
            info["nvcc"] = (done.stdout.strip().splitlines() or ["?"])[-1]
    info["kernels"] = check.machine.get("kernels") or kernel_status(check)  # probed after the install, if any
    refresh_cuda_kernels()
    info["scan_backends"] = available_backends(check.device)
    try:
        import monai

        info["monai"] = monai.__version__
    except ImportError as error:
        info["monai"] = f"not importable: {error}"
    info["default_network"] = describe_network_def(None)
    check.machine.update(info)
    where = info.get("gpu", "CPU only")
    return f"{where}; scan backends on {check.device}: {', '.join(info['scan_backends'])}", info


# ------------------------------------------------------------------------------------------------ 3-4. parity
def scan_orders(frames: int) -> list[Any]:
    from vivim_monai.ops import ScanOrder

    return [ScanOrder("forward"), ScanOrder("reverse"), ScanOrder("temporal", frames)]


TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2}  # of max |error| / max |reference|, outputs and gradients


def compare_backends(
    fn: Callable[..., torch.Tensor], inputs: dict[str, torch.Tensor], candidate: str, reference: str, seed: int
) -> dict[str, float]:
    """Relative errors of ``fn``'s output and of every input's gradient, ``candidate`` against ``reference``."""
    results = {}
    for backend in (candidate, reference):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        out = fn(backend=backend, **leaves)
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out)
        results[backend] = {"output": out, **{f"grad {k}": g for k, g in zip(leaves, grads)}}
    return {key: relative_error(value, results[reference][key]) for key, value in results[candidate].items()}


def scan_parity(
    device: torch.device | str, candidate: str, reference: str, dim: int, side: int, frames: int, seed: int = 0
) -> tuple[dict[str, Any], list[str], list[str]]:
    """``selective_scan`` and ``causal_conv1d`` of ``candidate`` vs ``reference`` backend on one Vivim stage size
    (``dim`` channels, L = frames * side**2), each scan order, fp32 and bf16 operands (A, D, delta_bias and the
    conv weight stay fp32, as Vivim passes them under autocast). Returns figures, the cases out of tolerance and
    the cases that raised (each case runs even when another raised)."""
    from vivim_monai.ops import causal_conv1d, selective_scan, vivim_scan_inputs

    length = frames * side * side
    figures: dict[str, Any] = {"size": f"D={dim}, L={length} ({frames}x{side}x{side}), N=16, B=1"}
    failures, crashes = [], []
    generator = torch.Generator().manual_seed(seed + 1)
    weight, bias = torch.randn(dim, 4, generator=generator) * 0.5, torch.randn(dim, generator=generator) * 0.1
    for order in scan_orders(frames):
        for dtype in (torch.float32, torch.bfloat16):
            base = vivim_scan_inputs(dim, length, seed=seed)
            scan_inputs = {
                k: (v.to(dtype) if k in ("u", "delta", "B", "C", "z") else v).to(device) for k, v in base.items()
            }
            conv_inputs = {"x": scan_inputs["u"], "weight": weight.to(device), "bias": bias.to(device)}
            cases = {
                "selective_scan": (
                    lambda backend, **kw: selective_scan(**kw, delta_softplus=True, backend=backend, scan_order=order),
                    scan_inputs,
                ),
                "causal_conv1d": (
                    lambda backend, **kw: causal_conv1d(**kw, activation="silu", backend=backend, scan_order=order),
                    conv_inputs,
                ),
            }
            for op, (fn, inputs) in cases.items():
                name = f"{op} {order.kind} {str(dtype).split('.')[-1]}"
                try:
                    errors = compare_backends(fn, inputs, candidate, reference, seed)
                except Exception as error:  # noqa: BLE001 - a kernel that raises is a finding; the other cases run
                    message = f"{type(error).__name__}: {str(error)[:300]}"
                    figures[name] = {"raised": message, "passed": False}
                    crashes.append(f"{name}: {message}")
                    continue
                worst = max(errors, key=errors.get)
                passed = errors[worst] <= TOLERANCE[dtype]
                figures[name] = {
                    "max_rel_err": errors[worst],
                    "worst": worst,
                    "tolerance": TOLERANCE[dtype],
                    "passed": passed,
                    "errors": errors,
                }
                if not passed:
                    failures.append(f"{name}: {worst} {errors[worst]:.2e} > {TOLERANCE[dtype]:g}")
    return figures, failures, crashes


def require_cuda_backend() -> None:
    reason = cuda_backend_reason()
    if reason:
        raise StepSkipped(f"the cuda scan backend is unavailable ({reason}); see install_cuda_extra")


def step_scan_parity(check: Check) -> tuple[str, dict[str, Any]]:
    require_cuda_backend()
    s = check.settings
    figures, failures, crashes = scan_parity(
        check.device, "cuda", "torch", s.parity_dim, s.parity_side, s.parity_frames
    )
    if crashes:
        check.state.setdefault("cuda_backend_broken", crashes[0])
    if failures or crashes:
        raise StepFailed("cuda backend: " + "; ".join(crashes + failures), figures)
    cases = len(figures) - 1
    return f"{cases} cases (outputs and gradients of every input) within tolerance", figures


def set_scan_backend(network: torch.nn.Module, backend: str | None) -> int:
    """Point every module with a ``scan_backend`` attribute (Vivim's mixers) at ``backend``; returns how many."""
    count = 0
    for module in network.modules():
        if hasattr(module, "scan_backend"):
            module.scan_backend = backend
            count += 1
    return count


def vivim_parity(
    device: torch.device | str, candidate: str, reference: str, size: int = 64, frames: int = 5
) -> tuple[dict[str, Any], list[str]]:
    """The tiny Vivim with ``candidate`` vs ``reference`` backend: fp32 forward and parameter gradients (relative
    norm), and on CUDA the bf16-autocast forward."""
    from vivim_monai.networks import Vivim

    torch.manual_seed(0)
    network = Vivim("tiny", in_channels=3, out_channels=3).to(device).eval()
    x = torch.randn(1, 3, size, size, frames, generator=torch.Generator().manual_seed(1)).to(device)
    figures: dict[str, Any] = {"input": f"1x3x{size}x{size}x{frames}"}
    outputs, grads = {}, {}
    for backend in (candidate, reference):
        set_scan_backend(network, backend)
        network.zero_grad()
        out = network(x)
        out.square().mean().backward()
        outputs[backend] = out.detach()
        grads[backend] = torch.cat([p.grad.flatten() for p in network.parameters() if p.grad is not None])
    diff = (grads[candidate] - grads[reference]).norm() / grads[reference].norm().clamp_min(1e-30)
    checks = {
        "forward float32": (relative_error(outputs[candidate], outputs[reference]), TOLERANCE[torch.float32]),
        "parameter gradients float32 (relative norm)": (diff.item(), TOLERANCE[torch.float32]),
    }
    if torch.device(device).type == "cuda":
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            auto = {}
            for backend in (candidate, reference):
                set_scan_backend(network, backend)
                auto[backend] = network(x).float()
        checks["forward bf16 autocast"] = (relative_error(auto[candidate], auto[reference]), TOLERANCE[torch.bfloat16])
    failures = []
    for name, (error, tolerance) in checks.items():
        figures[name] = {"rel_err": error, "tolerance": tolerance, "passed": error <= tolerance}
        if error > tolerance:
            failures.append(f"{name}: {error:.2e} > {tolerance:g}")
    set_scan_backend(network, None)
    return figures, failures


def step_vivim_parity(check: Check) -> tuple[str, dict[str, Any]]:
    require_cuda_backend()
    try:
        figures, failures = vivim_parity(check.device, "cuda", "torch")
    except Exception as error:
        check.state.setdefault("cuda_backend_broken", f"Vivim forward/backward: {type(error).__name__}: {error}")
        raise
    if failures:
        raise StepFailed("cuda differs from torch: " + "; ".join(failures), figures)
    return "tiny Vivim: cuda matches torch (fp32 forward and gradients, bf16 autocast forward)", figures


# --------------------------------------------------------------------------------------------- 5-7. bundle runs
def describe_network_def(overlay: str | None) -> str:
    """``network_def`` of train.json (+ ``overlay``) in words, e.g. ``Vivim(variant='b0')``."""
    configs = [REPO / "bundle" / "configs" / "train.json"] + ([REPO / overlay] if overlay else [])
    definition: dict[str, Any] = {}
    for path in configs:
        definition = json.loads(path.read_text()).get("network_def", definition)
    target = str(definition.get("_target_", "?")).rsplit(".", 1)[-1]
    details = ", ".join(f"{k}={v!r}" for k, v in definition.items() if not k.startswith("_") and "@" not in str(v))
    return f"{target}({details})"


def ensure_data(check: Check) -> Path:
    """Phantom DICOM cines with a folded datalist (written once per run, shared by the bundle steps)."""
    if "datalist" not in check.state:
        from vivim_monai.data import make_phantom_data

        s = check.settings
        check.state["datalist"] = make_phantom_data(
            check.settings.work / "phantom", s.cases, s.frames, s.folds, height=s.phantom_height, width=s.phantom_width
        )
    return check.state["datalist"]


def device_overrides(check: Check) -> dict[str, Any]:
    """``device`` / ``amp`` as config expressions: ``monai.bundle run`` reads ``--amp false`` as the string 'false'."""
    if check.settings.cuda:
        return {"device": "$torch.device('cuda:0')", "amp": "$True"}
    return {"device": "$torch.device('cpu')", "amp": "$False"}


def bundle_scan_backend(check: Check) -> tuple[str, dict[str, str]]:
    """The scan backend a bundle run will use on this device and the environment that makes it so: automatic,
    except that a ``cuda`` backend which raised in the parity steps is replaced by ``torch`` (the run still checks
    the rest of the GPU path)."""
    from vivim_monai.ops import ENV_VAR, available_backends

    env = dict(os.environ)
    broken = check.state.get("cuda_backend_broken")
    if broken and check.settings.cuda:
        env[ENV_VAR] = "torch"
        return f"torch (the cuda backend raised in the parity steps: {broken[:200]})", env
    return env.get(ENV_VAR) or available_backends(check.device)[0], env


def run_bundle_logged(
    check: Check, name: str, configs: list[str], overrides: dict[str, Any], env: dict[str, str]
) -> Outcome:
    from vivim_monai.bundle_cli import bundle_command, find_bundle

    command = bundle_command(find_bundle(), configs, overrides)
    print(f"  $ {' '.join(command)}", flush=True)
    return run_bounded(command, check.settings.work / f"{name}.log", max(1.0, check.remaining()), env)


def loss_trend(losses: list[float]) -> dict[str, Any]:
    """Mean loss of the first and the last few iterations (a quarter of them, 1 to 3) and whether it fell."""
    k = max(1, min(3, len(losses) // 4))
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    return {
        "iterations": len(losses),
        "compared": k,
        "first_mean": first,
        "last_mean": last,
        "finite": all(math.isfinite(v) for v in losses),
        "decreasing": len(losses) > 1 and last < first,
    }


def train(check: Check, name: str, overlay: str | None) -> tuple[str, dict[str, Any]]:
    """Train through ``monai.bundle run`` on the phantom fold 0; the loss per iteration from TensorBoard."""
    from vivim_monai.experiments.curves import read_scalars

    s, run_dir = check.settings, check.settings.work / name
    datalist = ensure_data(check)
    overrides = {
        "bundle_root": str(run_dir),
        "dataset_dir": str(datalist.parent),
        "fold": 0,
        "epochs": s.epochs,
        "val_interval": s.epochs,
        "batch_size": s.batch_size,
        "learning_rate": s.learning_rate,
        "warmup_epochs": 0,
        "max_numerosity": s.max_numerosity,
        "spatial_size": [s.train_size, s.train_size],
        **device_overrides(check),
    }
    backend, env = bundle_scan_backend(check)
    configs = ["train.json"] + ([str(REPO / overlay)] if overlay else [])
    outcome = run_bundle_logged(check, name, configs, overrides, env)
    figures: dict[str, Any] = {
        "network": describe_network_def(overlay),
        "device": str(check.device),
        "amp": s.cuda,
        "scan_backend": backend,
        "clip": f"{s.batch_size}x3x{s.train_size}x{s.train_size}x5",
        "epochs": s.epochs,
        "run_seconds": round(outcome.seconds, 1),
    }
    if outcome.returncode != 0:
        figures["log_tail"] = outcome.tail(30)
        how = "timed out (budget)" if outcome.timed_out else f"exit status {outcome.returncode}"
        raise StepFailed(f"monai.bundle run {how}: {last_error_line(outcome.tail(60))}", figures)
    scalars = read_scalars(run_dir / "eval")
    losses = [value for _, _, value in scalars.get("train_loss", [])]
    figures.update(loss_trend(losses))
    if scalars.get("val_mean_dice"):
        figures["val_mean_dice"] = scalars["val_mean_dice"][-1][2]
    figures["losses"] = [round(v, 5) for v in losses]
    checkpoint = run_dir / "models" / "model.pt"
    if name == "train_default" and checkpoint.is_file():
        check.state["checkpoint_root"] = run_dir
    if not losses:
        raise StepFailed("no train_loss in the run's TensorBoard events", figures)
    if not figures["finite"]:
        raise StepFailed("non-finite training loss", figures)
    trend = f"loss {figures['first_mean']:.4f} -> {figures['last_mean']:.4f} over {len(losses)} iterations"
    if s.cuda:
        if not figures["decreasing"]:
            raise StepFailed(f"loss did not decrease: {trend}", figures)
        return f"AMP on {check.device}: {trend}", figures
    return f"CPU plumbing run (AMP off; trend not judged at this size): {trend}", figures


def step_train_default(check: Check) -> tuple[str, dict[str, Any]]:
    return train(check, "train_default", None)


def step_train_vivim_b3(check: Check) -> tuple[str, dict[str, Any]]:
    return train(check, "train_vivim_b3", "configs/vivim_b3.json")


def metric_device_check(device: torch.device | str) -> dict[str, Any]:
    """Dice and Jaccard of :class:`ClipFrameMetric` on ``device`` tensors against the same on the CPU."""
    from vivim_monai.metrics import ClipFrameMetric

    generator = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (2, 1, 64, 64, 5), generator=generator)
    label = torch.randint(0, 3, (2, 1, 64, 64, 5), generator=generator)
    figures: dict[str, Any] = {}
    for name in ("dice", "jaccard"):
        results = {}
        for where in (torch.device(device), torch.device("cpu")):
            metric = ClipFrameMetric(name, num_classes=3, reduction="none")
            metric(y_pred=pred.to(where), y=label.to(where))
            results[where.type] = metric.aggregate()
        on_device = results[torch.device(device).type]
        figures[name] = {
            "computed_on": str(on_device.device),
            "max_abs_diff_vs_cpu": (on_device.cpu().double() - results["cpu"].double()).abs().max().item(),
        }
    return figures


def step_evaluate(check: Check) -> tuple[str, dict[str, Any]]:
    root = check.state.get("checkpoint_root")
    if root is None:
        raise StepSkipped("no checkpoint: train_default did not write models/model.pt")
    s, out_dir = check.settings, check.settings.work / "evaluation"
    overrides = {
        "bundle_root": str(root),
        "dataset_dir": str(ensure_data(check).parent),
        "fold": 0,
        "spatial_size": [s.train_size, s.train_size],
        "output_dir": str(out_dir),
        **device_overrides(check),
    }
    backend, env = bundle_scan_backend(check)
    outcome = run_bundle_logged(check, "evaluate", ["train.json", "evaluate.json"], overrides, env)
    figures: dict[str, Any] = {"device": str(check.device), "amp": s.cuda, "scan_backend": backend}
    figures["run_seconds"] = round(outcome.seconds, 1)
    figures["metrics_on_device"] = metric_device_check(check.device)
    if outcome.returncode != 0:
        figures["log_tail"] = outcome.tail(30)
        raise StepFailed(f"evaluation failed: {last_error_line(outcome.tail(60))}", figures)
    summary_path = out_dir / "metrics_summary.json"
    if not summary_path.is_file():
        raise StepFailed("no metrics_summary.json written", figures)
    summary = json.loads(summary_path.read_text())
    by_frame = summary.get("by_frame", {})
    figures.update(
        cases=summary.get("num_cases"),
        frames=summary.get("num_frames"),
        dice=by_frame.get("dice", {}),
        jaccard=by_frame.get("jaccard", {}),
        inference_timing=summary.get("inference_timing", {}),
    )
    dice = figures["dice"]
    wrong_device = [
        n for n, f in figures["metrics_on_device"].items() if f["computed_on"].split(":")[0] != check.device.type
    ]
    mismatch = [n for n, f in figures["metrics_on_device"].items() if f["max_abs_diff_vs_cpu"] > 1e-6]
    if wrong_device or mismatch:
        raise StepFailed(f"metrics not on {check.device} ({wrong_device}) or differ from the CPU ({mismatch})", figures)
    dice_text = ", ".join(f"{k} {v:.3f}" for k, v in dice.items() if isinstance(v, (int, float)))
    return f"evaluate.json on {check.device}: Dice {dice_text or '?'}; Dice/Jaccard on {check.device} = CPU", figures


# ------------------------------------------------------------------------------------------------ 8. throughput
def build_network(overlay: str | None, num_classes: int = 3) -> torch.nn.Module:
    """``network_def`` of train.json, or of an overlay on it (benchmark.py's ``network_from_overlay``)."""
    if overlay is not None:
        return benchmark_module().network_from_overlay(str(REPO / overlay), num_classes=num_classes)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundle" / "configs" / "train.json"))
    parser["class_names"] = [f"class {k}" for k in range(num_classes)]
    return parser.get_parsed_content("network_def")


NETWORKS = (("default network", None), ("Vivim-b3", "configs/vivim_b3.json"))
PRECISIONS = ("fp32", "bf16")
BACKENDS = ("cuda", "torch")


def throughput_rows(check: Check, networks: Sequence[tuple[str, str | None]] = NETWORKS) -> list[dict[str, Any]]:
    """frames/s per network x precision x scan backend (median of ``repeats`` after a warm-up; CUDA synchronised)."""
    s, device = check.settings, check.device
    time_call = benchmark_module().time_call
    cuda_reason = cuda_backend_reason() if device.type == "cuda" else "the cuda backend needs CUDA tensors"
    x = torch.randn(1, 3, s.fps_size, s.fps_size, s.fps_frames, generator=torch.Generator().manual_seed(0)).to(device)
    rows = []
    for label, overlay in networks:
        base = {"network": f"{label}: {describe_network_def(overlay)}"}
        try:
            torch.manual_seed(0)
            network = build_network(overlay).to(device).eval()
        except Exception as error:  # noqa: BLE001 - the row says why
            rows += [{**base, "precision": p, "backend": b, "error": f"{error}"} for p in PRECISIONS for b in BACKENDS]
            continue
        params = sum(p.numel() for p in network.parameters()) / 1e6
        for precision in PRECISIONS:
            for backend in BACKENDS:
                row = {**base, "params_m": round(params, 2), "precision": precision, "backend": backend}
                scans = set_scan_backend(network, backend)
                if backend == "cuda" and cuda_reason:
                    row["not_run"] = cuda_reason
                elif check.remaining() <= 0:
                    row["not_run"] = "time budget used up"
                elif backend == "cuda" and scans == 0:
                    row["not_run"] = "no selective scans in this network (see its torch row)"
                else:
                    row.update(time_forward(network, x, precision, s.repeats, device, time_call))
                rows.append(row)
        del network
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def time_forward(
    network: torch.nn.Module, x: torch.Tensor, precision: str, repeats: int, device: torch.device, time_call: Callable
) -> dict[str, Any]:
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.inference_mode(), autocast:
            seconds = time_call(lambda: network(x), repeats, device)
    except Exception as error:  # noqa: BLE001 - e.g. a kernel that rejects bf16: the row says so
        return {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    fps = x.shape[0] * x.shape[-1] / seconds
    row = {"latency_ms": round(seconds * 1e3, 2), "fps": round(fps, 2), "vs_paper": round(fps / PAPER_FPS, 2)}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def step_throughput(check: Check) -> tuple[str, dict[str, Any]]:
    rows = throughput_rows(check)
    check.state["throughput"] = rows
    figures = {"clip": f"1x3x{check.settings.fps_size}x{check.settings.fps_size}x{check.settings.fps_frames}"}
    figures["repeats"] = check.settings.repeats
    figures["rows"] = rows
    errors = [
        f"{r['network'].split(':')[0]} {r['precision']} {r['backend']}: {r['error']}" for r in rows if "error" in r
    ]
    if errors:
        raise StepFailed("; ".join(errors), figures)
    measured = [r for r in rows if "fps" in r]
    if not measured:
        raise StepFailed("no row measured", figures)
    best = max(measured, key=lambda r: r["fps"])
    return (
        f"{len(measured)}/{len(rows)} rows measured; best {best['fps']:.1f} frames/s "
        f"({best['network'].split(':')[0]}, {best['precision']}, {best['backend']}) = {best['vs_paper']:.2f}x the "
        f"paper's {PAPER_FPS} FPS ({PAPER_GPU})",
        figures,
    )


STEPS = (
    Step(
        "install_cuda_extra",
        step_install_cuda_extra,
        True,
        "requirements-cuda.txt: pinned wheels, else a bounded build",
    ),
    Step("environment", step_environment, False, "GPU, driver, CUDA, torch, kernel versions or import errors"),
    Step("scan_parity", step_scan_parity, True, "selective_scan / causal_conv1d: cuda vs torch, 3 orders, fp32 + bf16"),
    Step("vivim_parity", step_vivim_parity, True, "tiny Vivim forward and gradients: cuda vs torch backend"),
    Step("train_default", step_train_default, False, "default network_def: monai.bundle run, AMP, loss falls"),
    Step("train_vivim_b3", step_train_vivim_b3, True, "configs/vivim_b3.json: monai.bundle run, AMP, loss falls"),
    Step("evaluate", step_evaluate, False, "evaluate.json with the metric handlers on the device"),
    Step("throughput", step_throughput, True, f"frames/s at 1x3x256x256x5 vs the paper's {PAPER_FPS} FPS"),
)


# ------------------------------------------------------------------------------------------------ report
#: figures kept in the JSON only: long logs, per-iteration values, the throughput rows (a table of their own)
MD_HIDDEN = {"rows", "traceback", "losses", "log_tail", "tail", "errors"}


def format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}"
    if isinstance(value, dict):
        items = [(k, v) for k, v in value.items() if k not in MD_HIDDEN]
        return "; ".join(
            f"{k} ({format_value(v)})" if isinstance(v, dict) else f"{k} {format_value(v)}" for k, v in items
        )
    if isinstance(value, list):
        if len(value) > 12:
            return f"{len(value)} values (JSON)"
        return "; ".join(f"({format_value(v)})" if isinstance(v, dict) else format_value(v) for v in value)
    return str(value)


def cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def throughput_table(rows: list[dict[str, Any]] | None, skipped: str = "") -> list[str]:
    """The frames/s table: default network / Vivim-b3 x fp32 / bf16 x cuda / torch, ratio to the paper."""
    lines = [
        f"| network | precision | scan backend | latency (ms) | frames/s | vs paper ({PAPER_FPS} FPS, {PAPER_GPU}) |",
        "|---|---|---|---|---|---|",
    ]
    if not rows:
        rows = [
            {"network": label, "precision": p, "backend": b, "not_run": skipped or "not measured"}
            for label, _ in NETWORKS
            for p in PRECISIONS
            for b in BACKENDS
        ]
    for row in rows:
        if "fps" in row:
            figures = f"{row['latency_ms']:.1f} | {row['fps']:.2f} | {row['vs_paper']:.2f}x"
        else:
            figures = f"not run: {cell(row.get('not_run') or row.get('error'))} | - | -"
        lines.append(f"| {cell(row['network'])} | {row['precision']} | {row['backend']} | {figures} |")
    lines.append(f"| paper (Vivim) | - | - | {1e3 * 5 / PAPER_FPS:.1f} | {PAPER_FPS} | 1.00x |")
    return lines


def machine_line(machine: dict[str, Any]) -> str:
    kernels = machine.get("kernels", {})
    kernel_text = "; ".join(
        f"{name} {probe.get('version') or 'not importable: ' + probe.get('error', '?')}"
        for name, probe in kernels.items()
    )
    if machine.get("gpu"):
        gpu = f"GPU {machine['gpu']} (sm_{machine.get('capability', '?').replace('.', '')})"
        gpu += f", driver {machine['driver']}" if machine.get("driver") else ""
    else:
        gpu = NO_CUDA
    torch_text = f"torch {machine.get('torch')} (CUDA {machine.get('torch_cuda')}), Python {machine.get('python')}"
    return "; ".join(part for part in (gpu, torch_text, kernel_text) if part)


def render_markdown(report: dict[str, Any], details: bool = True) -> str:
    """The report for docs/performance.md: steps, the frames/s table and (``details``) a figure table per step."""
    machine, steps = report["machine"], report["steps"]
    lines = [
        f"# {TITLE}",
        "",
        f"Generated {report['generated_utc']} by `scripts/gpu_check.py` in {report['elapsed_s']:.0f} s of a "
        f"{report['budget_s']:.0f} s budget{' (still running)' if report['partial'] else ''}.",
        "",
        f"Machine: {machine_line(machine)}.",
        "",
        "| step | status | seconds | what | result |",
        "|---|---|---|---|---|",
    ]
    summaries = {step.name: step.summary for step in STEPS}
    for record in steps:
        what = cell(summaries.get(record["step"], ""))
        lines.append(
            f"| {record['step']} | {record['status']} | {record['seconds']:.1f} | {what} | {cell(record['reason'])} |"
        )
    throughput = next((r for r in steps if r["step"] == "throughput"), None)
    rows = (throughput or {}).get("figures", {}).get("rows")
    skipped = f"{throughput['status']}: {throughput['reason']}" if throughput and not rows else ""
    lines += [
        "",
        f"## Inference frames/s, 1 x 3 x {report['settings']['fps_size']} x {report['settings']['fps_size']} x "
        f"{report['settings']['fps_frames']} clip",
        "",
        f"Median of {report['settings']['repeats']} forward passes after a warm-up (`torch.inference_mode`, CUDA "
        f"synchronised); bf16 = `torch.autocast(dtype=torch.bfloat16)`. The paper's {PAPER_FPS} FPS was measured on "
        f"an {PAPER_GPU}, not on this GPU: the ratio compares machines as well as implementations.",
        "",
        *throughput_table(rows, skipped),
    ]
    if not details:
        return "\n".join(lines) + "\n"
    lines += ["", "## Steps in detail"]
    for record in steps:
        lines += ["", f"### {record['step']}: {record['status']}", "", cell(record["reason"]) or "-", ""]
        figures = {k: v for k, v in record["figures"].items() if k not in MD_HIDDEN}
        if figures:
            lines += ["| figure | value |", "|---|---|"]
            lines += [f"| {cell(k)} | {cell(v)} |" for k, v in figures.items()]
    return "\n".join(lines) + "\n"


def build_report(check: Check, partial: bool) -> dict[str, Any]:
    settings = {f.name: getattr(check.settings, f.name) for f in fields(check.settings)}
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.items()}
    counts = {status: sum(r["status"] == status for r in check.records) for status in ("passed", "failed", "skipped")}
    return {
        "title": TITLE,
        "generated_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "partial": partial,
        "budget_s": check.settings.budget,
        "elapsed_s": round(check.elapsed(), 1),
        "cuda": check.settings.cuda,
        "paper": {"fps": PAPER_FPS, "gpu": PAPER_GPU, "clip": "1x3x256x256x5"},
        "machine": check.machine,
        "summary": counts,
        "steps": check.records,
        "settings": settings,
    }


def write_reports(check: Check, partial: bool) -> dict[str, Any]:
    report = build_report(check, partial)
    atomic_write_text(check.settings.out / "gpu_check.json", json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(check.settings.out / "gpu_check.md", render_markdown(report))
    return report


def run_checks(settings: Settings, steps: Sequence[Step] = STEPS) -> dict[str, Any]:
    """Every step in order, the reports rewritten after each; returns the final report."""
    check = Check(settings)
    check.machine.update(basic_machine())
    settings.out.mkdir(parents=True, exist_ok=True)
    settings.work.mkdir(parents=True, exist_ok=True)
    for step in steps:
        print(f"[gpu_check] {step.name} ...", flush=True)
        record = run_step(check, step)
        check.records.append(record)
        print(f"[gpu_check] {step.name}: {record['status']} ({record['seconds']:.1f} s) {record['reason']}", flush=True)
        write_reports(check, partial=True)
    return write_reports(check, partial=False)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="report folder")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for all steps (default 540)")
    parser.add_argument("--work", help="scratch folder (data, runs, builds); default a temporary one, removed after")
    parser.add_argument("--wheels", default=".gpu_check_wheels", help="carried wheels / source archives (offline)")
    parser.add_argument("--build-timeout", type=float, default=300.0, help="cap of the CUDA extra's source build (s)")
    parser.add_argument("--reserve", type=float, default=240.0, help="seconds the install leaves for later steps")
    parser.add_argument("--repeats", type=int, default=10, help="timed forward passes per throughput row")
    parser.add_argument("--steps", nargs="+", default=[], choices=[s.name for s in STEPS], help="run only these")
    parser.add_argument("--no-cuda", action="store_true", help="the dry run even where CUDA is available")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="vivim_gpu_check_"))
    wheels = Path(args.wheels) if Path(args.wheels).is_absolute() else REPO / args.wheels
    settings = default_settings(
        Path(args.out).resolve(),
        work.resolve(),
        cuda=torch.cuda.is_available() and not args.no_cuda,
        budget=args.budget,
        steps=tuple(args.steps),
        wheels=wheels,
        build_timeout=args.build_timeout,
        reserve=args.reserve,
        repeats=args.repeats,
    )
    try:
        report = run_checks(settings)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + render_markdown(report, details=False))  # the figures of every step: gpu_check.md / .json
    print(f"[gpu_check] {report['summary']}; reports in {settings.out}", flush=True)
    return report


if __name__ == "__main__":
    main()

"""scripts/gpu_check.py: the CPU dry run, the time budget, the reports, and the GPU steps' logic run on the CPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports


def _load_gpu_check():
    """scripts/gpu_check.py as a module, registered in sys.modules (its dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gpu_check = _load_gpu_check()
CUDA_STEPS = [step.name for step in gpu_check.STEPS if step.needs_cuda]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One CPU dry run of every step (tiny sizes: about 45 s on a 2-core machine)."""
    out, work = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("work")
    report = gpu_check.main(["--out", str(out), "--work", str(work), "--no-cuda"])
    return out, report


def test_dry_run_writes_every_step_and_skips_cuda_steps(dry_run):
    out, report = dry_run
    saved = json.loads((out / "gpu_check.json").read_text())
    assert saved["steps"] == report["steps"] and saved["partial"] is False
    records = {record["step"]: record for record in saved["steps"]}
    assert list(records) == [step.name for step in gpu_check.STEPS]
    for name in CUDA_STEPS:
        assert records[name]["status"] == "skipped" and records[name]["reason"] == "no CUDA device", records[name]
    for name in ("environment", "train_default", "evaluate"):
        assert records[name]["status"] == "passed", records[name]
    train = records["train_default"]["figures"]
    assert train["device"] == "cpu" and train["iterations"] >= 1 and train["finite"]
    assert train["network"] == gpu_check.describe_network_def(None), "the default network is read from train.json"
    assert records["evaluate"]["figures"]["metrics_on_device"]["dice"]["max_abs_diff_vs_cpu"] == 0.0
    kernels = saved["machine"]["kernels"]
    assert set(kernels) == {"mamba-ssm", "causal-conv1d"} and all(
        "version" in k or "error" in k for k in kernels.values()
    )
    markdown = (out / "gpu_check.md").read_text()
    for name in records:
        assert f"| {name} |" in markdown
    assert "35.33" in markdown and "no CUDA device" in markdown
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")], "atomic writes leave no temporary file"


def test_zero_budget_skips_every_step(tmp_path):
    settings = gpu_check.default_settings(tmp_path / "out", tmp_path / "work", cuda=False, budget=0.0)
    report = gpu_check.run_checks(settings)
    assert [r["status"] for r in report["steps"]] == ["skipped"] * len(gpu_check.STEPS)
    assert all("time budget of 0 s used up" in r["reason"] for r in report["steps"])
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert f"| paper (Vivim) | - | - | 141.5 | {gpu_check.PAPER_FPS} | 1.00x |" in markdown
    assert markdown.count("| Vivim-b3 |") == 4 and markdown.count("| default network |") == 4


def test_budget_runs_out_between_steps_and_a_crash_does_not_stop_the_rest(tmp_path):
    def slow(check):
        time.sleep(0.3)
        return "slept", {"seconds": 0.3}

    def crash(check):
        raise ValueError("broken on purpose")

    steps = [
        gpu_check.Step("crash", crash, False, "raises"),
        gpu_check.Step("slow", slow, False, "sleeps"),
        gpu_check.Step("late", slow, False, "too late"),
    ]
    settings = gpu_check.default_settings(tmp_path / "out", tmp_path / "work", cuda=False, budget=0.2)
    report = gpu_check.run_checks(settings, steps)
    crashed, slept, late = report["steps"]
    assert crashed["status"] == "failed" and crashed["reason"] == "ValueError: broken on purpose"
    assert "broken on purpose" in crashed["figures"]["traceback"]
    assert slept["status"] == "passed"
    assert late["status"] == "skipped" and "time budget of 0 s used up" in late["reason"]


def test_steps_option_selects_steps(tmp_path):
    settings = gpu_check.default_settings(tmp_path / "out", tmp_path / "w", cuda=False, steps=("environment",))
    report = gpu_check.run_checks(
        settings, [s for s in gpu_check.STEPS if s.name in ("install_cuda_extra", "evaluate")]
    )
    assert [(r["status"], r["reason"]) for r in report["steps"]] == [("skipped", "not selected (--steps)")] * 2


def test_atomic_writer_replaces_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    gpu_check.atomic_write_text(path, "first")
    gpu_check.atomic_write_text(path, "second")
    assert path.read_text() == "second"
    with pytest.raises(TypeError):
        gpu_check.atomic_write_text(path, 42)  # fails while writing: the old file stays whole
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_throughput_table_has_the_paper_reference_and_ratios():
    rows = [
        {"network": "default network: Vivim(variant='b0')", "precision": "fp32", "backend": "cuda", "latency_ms": 50.0}
        | {"fps": 100.0, "vs_paper": 2.83},
        {"network": "Vivim-b3", "precision": "bf16", "backend": "cuda", "not_run": "no kernels"},
    ]
    table = "\n".join(gpu_check.throughput_table(rows))
    assert "vs paper (35.33 FPS, RTX 4090)" in table
    assert "| 50.0 | 100.00 | 2.83x |" in table and "not run: no kernels" in table


GENCODE_SNIPPET = """
cc_flag = []
cc_flag.append("-gencode")
cc_flag.append("arch=compute_80,code=sm_80")
if bare_metal_version >= Version("11.8"):
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_90,code=sm_90")
if bare_metal_version >= Version("12.8"):
    cc_flag.append("-gencode")
    cc_flag.append("arch=compute_100,code=sm_100")
"""


def test_restrict_gencode_keeps_one_architecture_and_stays_valid_python():
    patched, kept = gpu_check.restrict_gencode(GENCODE_SNIPPET, "90")
    assert kept == 1
    namespace = {"Version": lambda v: tuple(map(int, v.split("."))), "bare_metal_version": (13, 0)}
    exec(compile(patched, "setup.py", "exec"), namespace)
    assert namespace["cc_flag"] == ["-gencode", "arch=compute_90,code=sm_90"]
    assert gpu_check.restrict_gencode(GENCODE_SNIPPET, "75") == (GENCODE_SNIPPET, 0), "unknown arch: unchanged"


def test_bounded_process_group_is_killed_at_the_deadline(tmp_path):
    pid_file = tmp_path / "child.pid"
    command = ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"]
    start = time.monotonic()
    outcome = gpu_check.run_bounded(command, tmp_path / "log.txt", timeout=1.0)
    assert outcome.timed_out and time.monotonic() - start < 15
    status = Path(f"/proc/{pid_file.read_text().strip()}/status")
    assert not status.exists() or "State:\tZ" in status.read_text(), "the grandchild (like nvcc under pip) is gone"


def test_install_attempts_record_the_exact_error(tmp_path):
    settings = gpu_check.default_settings(tmp_path / "out", tmp_path / "work", cuda=True, reserve=0.0)
    installer = gpu_check.CudaExtraInstaller(gpu_check.Check(settings))
    error = "urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>"
    code = (
        f"print('Guessing wheel URL:  https://example.invalid/x.whl'); print('building'); raise SystemExit({error!r})"
    )
    jobs = {
        "mamba-ssm": ([sys.executable, "-c", code], None),
        "causal-conv1d": ([sys.executable, "-c", "import time; time.sleep(60)"], None),
    }
    assert installer.wheel_jobs("pinned wheel", jobs, cap=3.0) == []
    failed, hung = installer.attempts
    assert failed["status"] == "failed" and failed["error"] == error
    assert failed["wheel_url"] == "https://example.invalid/x.whl"
    assert hung["status"] == "timed out" and hung["error"].startswith("killed after 3 s")


def test_offline_source_only_package_skips_the_all_architecture_pinned_build(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "mamba_ssm-2.3.2.post1.tar.gz").write_bytes(b"")
    (wheels / "causal_conv1d-1.7.0.tar.gz").write_bytes(b"")
    (wheels / "causal_conv1d-1.7.0-cp312-cp312-linux_x86_64.whl").write_bytes(b"")
    settings = gpu_check.default_settings(tmp_path / "out", tmp_path / "work", cuda=True, wheels=wheels)
    installer = gpu_check.CudaExtraInstaller(gpu_check.Check(settings))
    assert installer.offline
    assert installer.only_source_carried("mamba-ssm", "2.3.2.post1")
    assert not installer.only_source_carried("causal-conv1d", "1.7.0")  # a carried wheel: pip installs it
    assert not installer.only_source_carried("mamba-ssm", "2.3.1")  # no archive of that version carried


def test_runtime_imports_leave_simpleitk_for_volume_files():
    """A GPU image without SimpleITK (50 MB) still imports the package; only NIfTI/MHA reading needs it."""
    code = (
        "import sys, vivim_monai.data, vivim_monai.io, vivim_monai.networks, vivim_monai.transforms; "
        "print('SimpleITK' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "False"


def test_loss_trend_compares_first_and_last_iterations():
    trend = gpu_check.loss_trend([1.0, 0.9, 0.95, 0.8, 0.6, 0.5, 0.55, 0.4])
    assert trend["compared"] == 2 and trend["first_mean"] == pytest.approx(0.95)
    assert trend["last_mean"] == pytest.approx(0.475) and trend["decreasing"] and trend["finite"]
    assert not gpu_check.loss_trend([0.5, float("nan")])["finite"]
    assert not gpu_check.loss_trend([0.5])["decreasing"]


def test_scan_parity_logic_on_cpu_backends(monkeypatch):
    """The GPU step's comparison, run with the cpu (or torch) backend as candidate: passes, then catches a skew."""
    from vivim_monai import ops

    candidate = "cpu" if "cpu" in ops.available_backends("cpu") else "torch"
    figures, failures, crashes = gpu_check.scan_parity("cpu", candidate, "torch", dim=8, side=2, frames=5)
    assert not failures and not crashes
    assert len(figures) == 1 + 3 * 2 * 2, "size + {scan, conv} x 3 orders x 2 dtypes"
    assert set(figures["selective_scan temporal float32"]["errors"]) == {"output"} | {
        f"grad {k}" for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    }
    real_scan, real_conv = ops.selective_scan, ops.causal_conv1d

    def skewed_scan(*args, backend=None, **kwargs):
        out = real_scan(*args, backend=backend, **kwargs)
        return out * 1.01 if backend == candidate else out

    def broken_conv(*args, backend=None, **kwargs):
        if backend == candidate:
            raise AttributeError("'str' object has no attribute 'contiguous'")
        return real_conv(*args, backend=backend, **kwargs)

    monkeypatch.setattr(ops, "selective_scan", skewed_scan)
    monkeypatch.setattr(ops, "causal_conv1d", broken_conv)
    figures, failures, crashes = gpu_check.scan_parity("cpu", candidate, "torch", dim=8, side=2, frames=5)
    assert len(failures) == 3 and all("selective_scan" in f and "float32" in f for f in failures), failures
    assert len(crashes) == 6 and "no attribute 'contiguous'" in crashes[0]


def test_vivim_parity_and_throughput_rows_on_cpu(tmp_path):
    from vivim_monai import ops

    candidate = "cpu" if "cpu" in ops.available_backends("cpu") else "torch"
    figures, failures = gpu_check.vivim_parity("cpu", candidate, "torch", size=32, frames=3)
    assert not failures and figures["forward float32"]["passed"]
    settings = gpu_check.default_settings(tmp_path, tmp_path, cuda=False, fps_size=32, fps_frames=3, repeats=1)
    rows = gpu_check.throughput_rows(gpu_check.Check(settings), [("tiny", "configs/vivim_tiny.json")])
    assert [(r["precision"], r["backend"]) for r in rows] == [
        (p, b) for p in ("fp32", "bf16") for b in ("cuda", "torch")
    ]
    assert all("needs CUDA tensors" in r["not_run"] for r in rows if r["backend"] == "cuda")
    for row in (r for r in rows if r["backend"] == "torch"):
        assert row["vs_paper"] == pytest.approx(row["fps"] / 35.33, abs=0.01)


def test_wrapper_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(REPO_ROOT / "scripts" / "gpu_check.sh")]).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metric_device_check_on_cuda():
    figures = gpu_check.metric_device_check("cuda")
    assert all(f["computed_on"].startswith("cuda") and f["max_abs_diff_vs_cpu"] < 1e-6 for f in figures.values())

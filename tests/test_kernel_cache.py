"""The compiled CPU scan's build cache survives moving the package (issue 17): the build compiles a copy of the source
kept in the cache under the build key, so ninja never sees a new source path or time stamp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vivim_monai.ops import cpu_kernel

pytestmark = pytest.mark.integration  # whole workflows, subprocesses or exports

PACKAGE = Path(cpu_kernel.__file__).resolve().parents[1]


def test_stable_source_depends_on_the_key_only_and_keeps_its_time_stamp(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "cache"))
    here, moved = tmp_path / "here" / "kernel.cpp", tmp_path / "moved" / "kernel.cpp"
    for path in (here, moved):
        path.parent.mkdir()
        path.write_text("int answer() { return 42; }\n")
    os.utime(here, (1_000_000, 1_000_000))
    first = cpu_kernel._stable_source(here, "vivim_scan_cpu_key")
    assert first == tmp_path / "cache" / "vivim_sources" / "vivim_scan_cpu_key" / "kernel.cpp"
    stamp = first.stat().st_mtime_ns
    time.sleep(0.01)
    assert cpu_kernel._stable_source(moved, "vivim_scan_cpu_key") == first  # a moved, newer copy: same file
    assert first.stat().st_mtime_ns == stamp and first.read_text() == here.read_text()

    moved.write_text("int answer() { return 43; }\n")  # a stale or damaged copy is replaced
    assert cpu_kernel._stable_source(moved, "vivim_scan_cpu_key").read_text() == moved.read_text()
    assert [p.name for p in first.parent.iterdir()] == ["kernel.cpp"], "no temporary left"


def _load_from(package_copy: Path, cache: Path) -> float:
    """Build or load the kernel of a copy of the package in a fresh process; the seconds it took (skips the test
    when the kernel cannot be built here)."""
    script = (
        "import sys, time; import vivim_monai.ops.cpu_kernel as k; "
        "assert k.__file__.startswith(sys.argv[1]), k.__file__; "
        "start = time.perf_counter(); ok = k.is_available(); print(ok, time.perf_counter() - start, k.build_error())"
    )
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "PYTHONPATH": str(package_copy)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(package_copy)],
        cwd=package_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ok, seconds, *error = done.stdout.split(maxsplit=2)
    if ok != "True":
        pytest.skip(f"the CPU kernel cannot be built here: {' '.join(error)}")
    return float(seconds)


@pytest.mark.slow
def test_moved_package_reuses_the_compiled_kernel(tmp_path):
    """The kernel the repository's package built (here, or earlier in the suite) is loaded, not recompiled, by two
    copies of the package elsewhere (e.g. the packaged bundle, then the same bundle unpacked again)."""
    if not cpu_kernel.is_available():
        pytest.skip(f"the CPU kernel cannot be built here: {cpu_kernel.build_error()}")
    from torch.utils.cpp_extension import get_default_build_root

    cache = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    build = Path(cpu_kernel.load_extension().__file__).parent  # <cache>/<python and torch tag>/<build key>
    objects = sorted(build.rglob("*.o"))
    stamps = [p.stat().st_mtime_ns for p in objects]
    assert objects, f"no object files in {build}"
    for name in ("bundle", "moved"):
        copy = tmp_path / name
        shutil.copytree(PACKAGE, copy / "vivim_monai", ignore=shutil.ignore_patterns("__pycache__"))
        seconds = _load_from(copy, cache)
        assert [p.stat().st_mtime_ns for p in sorted(build.rglob("*.o"))] == stamps, f"{name}: recompiled"
        assert seconds < 20, f"{name}: loading the cached kernel took {seconds:.1f} s"

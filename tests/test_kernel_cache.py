"""The compiled CPU scan's build cache survives moving the package (issue 17): the build compiles a copy of the source
kept in the cache under the build key, so ninja never sees a new source path or time stamp."""

from __future__ import annotations

import json
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


def _load_from(package_copy: Path) -> Path:
    """Build or load the kernel of a copy of the package in a fresh process with this process's environment (so the
    same cache); the library it loaded (skips the test when the kernel cannot be built here)."""
    script = (
        "import json, sys; import vivim_monai.ops.cpu_kernel as k; "
        "assert k.__file__.startswith(sys.argv[1]), k.__file__; "
        "module = k.load_extension(); print(json.dumps([getattr(module, '__file__', None), k.build_error()]))"
    )
    env = {**os.environ, "PYTHONPATH": str(package_copy)}
    done = subprocess.run(
        [sys.executable, "-c", script, str(package_copy)],
        cwd=package_copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    library, error = json.loads(done.stdout.strip().splitlines()[-1])
    if library is None:
        pytest.skip(f"the CPU kernel cannot be built here: {error}")
    return Path(library)


@pytest.mark.slow
def test_moved_package_reuses_the_compiled_kernel(tmp_path):
    """The kernel the repository's package built (here, or earlier in the suite) is loaded, not recompiled, by two
    copies of the package elsewhere (e.g. the packaged bundle, then the same bundle unpacked again)."""
    if not cpu_kernel.is_available():
        pytest.skip(f"the CPU kernel cannot be built here: {cpu_kernel.build_error()}")
    build = Path(cpu_kernel.load_extension().__file__).parent  # this build key's folder in the cache
    built = sorted(p for p in build.iterdir() if p.suffix in (".o", ".so"))
    stamps = [p.stat().st_mtime_ns for p in built]
    assert len(built) >= 2, f"no object file and library in {build}"
    for name in ("bundle", "moved"):
        copy = tmp_path / name
        shutil.copytree(PACKAGE, copy / "vivim_monai", ignore=shutil.ignore_patterns("__pycache__"))
        library = _load_from(copy)
        assert library.parent == build, f"{name}: loaded {library}, not the kernel built in {build}"
        assert [p.stat().st_mtime_ns for p in built] == stamps, f"{name}: recompiled"

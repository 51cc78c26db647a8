"""Run independent commands a few at a time, each writing its output to its own log (cross-validation folds side by
side: on a CPU, two single-threaded trainings finish sooner than the same two one after the other on two threads)."""

from __future__ import annotations

import os
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

__all__ = ["Job", "JobResult", "run_jobs", "threads_per_job"]


@dataclass(frozen=True)
class Job:
    """One command, its name in progress lines, and the file that receives its stdout and stderr."""

    name: str
    command: list[str]
    log: Path


@dataclass(frozen=True)
class JobResult:
    job: Job
    returncode: int
    seconds: float


def threads_per_job(workers: int, cores: int | None = None) -> int:
    """CPU threads each of ``workers`` concurrent jobs may use without oversubscribing ``cores`` (at least one)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    return max(1, (cores or os.cpu_count() or 1) // workers)


Runner = Callable[..., subprocess.CompletedProcess]


def run_jobs(
    jobs: Sequence[Job],
    workers: int,
    env: Mapping[str, str] | None = None,
    runner: Runner = subprocess.run,
) -> list[JobResult]:
    """Run every job in its own process, at most ``workers`` at once, started in the order given; return when all have
    ended, in that order. A failed job does not stop the others (a fold that fails must not cost the folds beside
    it); the caller decides what a non-zero return code means. Logs are written as the job runs, so a crash leaves
    its cause there; a progress line is printed when each job starts and ends."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    printing = threading.Lock()

    def say(text: str) -> None:
        with printing:
            print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)

    def one(job: Job) -> JobResult:
        job.log.parent.mkdir(parents=True, exist_ok=True)
        say(f"start {job.name} (log {job.log})")
        start = time.perf_counter()
        with open(job.log, "w") as log:
            log.write(f"$ {shlex.join(job.command)}\n")
            log.flush()
            completed = runner(job.command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
        result = JobResult(job, completed.returncode, time.perf_counter() - start)
        state = "done" if result.returncode == 0 else f"FAILED (exit {result.returncode}; see {job.log})"
        say(f"{state} {job.name} in {result.seconds / 60:.1f} min")
        return result

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, jobs))

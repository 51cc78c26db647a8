"""Atomic file output: a crash or an exception never leaves a half-written file at the final path.

Failures to write (full disk, read-only or missing folder, a path under a file) are re-raised as an ``OSError``
of the same ``errno`` (so ``PermissionError``, ``NotADirectoryError``... stay catchable as such) whose message names
the final path and the reason, e.g. ``[Errno 28] cannot write out/a/a_seg.nii.gz: No space left on device``.
"""

from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

__all__ = ["atomic_write", "atomic_write_csv", "write_error"]


def _file_mode() -> int:
    """The mode ``open()`` gives new files (0o666 less the umask); ``mkstemp`` files are 0o600 whatever the umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _os_cause(err: BaseException) -> OSError | None:
    """The first ``OSError`` with an ``errno`` in ``err``'s chain (writers such as pydicom re-raise without one)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_error(path: str | os.PathLike, err: BaseException) -> OSError:
    """``OSError`` (same ``errno``, hence subclass) saying ``cannot write <path>: <reason>``."""
    cause = _os_cause(err)
    if cause is not None:
        return OSError(cause.errno, f"cannot write {os.fspath(path)}: {cause.strerror or cause}")
    return OSError(f"cannot write {os.fspath(path)}: {err}")


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_name)`` on a hidden sibling of ``path``, then rename it over ``path``.

    The temporary file keeps ``path``'s suffixes (writers such as nibabel choose the format from them), lives in the
    same folder (so the final ``os.replace`` is atomic on POSIX and Windows) and is removed if ``write`` fails.
    Missing parent folders are created; the file gets the permissions of a plain ``open()`` (umask applied).
    An ``OSError`` (also one a writer wrapped in another exception) is re-raised by :func:`write_error`, naming
    ``path``. Returns ``path``.
    """
    path = Path(path)
    temporary: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes)
        )
        os.close(handle)
        write(temporary)
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, path)
    except BaseException as err:
        if temporary is not None and os.path.lexists(temporary):
            try:
                os.unlink(temporary)
            except OSError:
                pass  # the original error matters more than a temporary file that cannot be removed
        if isinstance(err, OSError) or (isinstance(err, Exception) and _os_cause(err) is not None):
            raise write_error(path, err) from err
        raise
    return path


def atomic_write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a CSV (header + rows) atomically, UTF-8, with the csv module's line ends."""

    def write(name: str) -> None:
        with open(name, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)

    return atomic_write(path, write)

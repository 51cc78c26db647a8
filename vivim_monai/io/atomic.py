"""Atomic file output: a crash or an exception never leaves a half-written file at the final path."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(temporary_name)`` on a hidden sibling of ``path``, then rename it over ``path``.

    The temporary file keeps ``path``'s suffixes (writers such as nibabel choose the format from them), lives in the
    same folder (so the final ``os.replace`` is atomic on POSIX and Windows) and is removed if ``write`` fails.
    Missing parent folders are created. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + "".join(path.suffixes)
    )
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path

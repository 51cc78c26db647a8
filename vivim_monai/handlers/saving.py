"""``AtomicCheckpointSaver``: MONAI's ``CheckpointSaver`` whose checkpoints are never truncated and never lost.

MONAI's saver writes through ignite's ``DiskSaver(atomic=False)`` straight to the final name, so a kill during
``torch.save`` leaves a truncated ``.pt``; and ignite removes the checkpoint being replaced *before* it saves the
new one, so a kill in between leaves no resume checkpoint at all (``n_saved=1``). Here every file is written by
:func:`~vivim_monai.utils.atomic_write` (hidden temporary name, then rename, with the umask's permissions) and removals
wait until the next file is complete. A full disk or an unwritable folder raises an ``OSError`` naming the file
(``torch.save`` itself only reports "unexpected pos ...").
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import ignite.distributed as idist
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from vivim_monai.utils.atomic import atomic_write, write_error

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver"]


class _RecordingFile:
    """File wrapper that keeps the ``OSError`` of a failed write (``torch.save`` turns it into a vague error)."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


class AtomicDiskSaver(DiskSaver):
    """ignite ``DiskSaver`` writing with :func:`atomic_write` and deferring removals until the next save is done.

    Args:
        dirname: folder of the checkpoints (created if needed).
        filename: fixed file name replacing ignite's (MONAI's ``final_filename`` / ``key_metric_filename``).
        save_on_rank: the distributed rank that writes.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, save_on_rank: int = 0) -> None:
        try:
            super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, save_on_rank=save_on_rank)
        except OSError as err:
            raise write_error(dirname, err) from err
        self.filename = filename
        self._stale: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        filename = self.filename or filename
        super().__call__(checkpoint, filename, metadata)
        if idist.get_rank() == self.save_on_rank:
            stale, self._stale = self._stale, []
            for name in stale:
                if name != filename:
                    (self.dirname / name).unlink(missing_ok=True)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        def write(name: str) -> None:
            with open(name, "wb") as handle:
                recording = _RecordingFile(handle)
                try:
                    func(checkpoint, recording, **self.kwargs)
                except RuntimeError as err:
                    if recording.error is not None:
                        raise recording.error from err
                    raise

        atomic_write(path, write)

    def remove(self, filename: str) -> None:
        """Remove ``filename`` once the next checkpoint is saved (ignite removes before saving)."""
        if idist.get_rank() == self.save_on_rank:
            self._stale.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI ``CheckpointSaver`` (same arguments) saving through :class:`AtomicDiskSaver`.

    The folder is created and checked for write access when the saver is built, so an unwritable ``save_dir``
    fails before training rather than after the first epoch.
    """

    def __init__(self, save_dir: str, save_dict: dict, *args: Any, **kwargs: Any) -> None:
        if idist.get_rank() == 0:
            try:
                Path(save_dir).mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise write_error(save_dir, err) from err
            if not os.access(save_dir, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, f"cannot write {save_dir}: {os.strerror(errno.EACCES)}")
        super().__init__(save_dir, save_dict, *args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                fixed = getattr(checkpoint.save_handler, "filename", None)
                checkpoint.save_handler = AtomicDiskSaver(save_dir, fixed)

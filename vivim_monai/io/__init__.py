"""Output writers; every file is written atomically (see :func:`atomic_write`)."""

from vivim_monai.io.atomic import atomic_write

__all__ = ["atomic_write"]

"""Small I/O helpers shared by the package: atomic file writes and optional imports."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through ``write(f)`` on a temp file beside it, fsync, then rename.

    A reader (or a process killed at any moment, ``kill -9`` included) sees the old file or the
    new one, never half of one: ``os.replace`` is atomic on POSIX within one file system.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def optional_import(module: str, purpose: str, install: str) -> ModuleType:
    """Import ``module`` or raise ImportError saying what needs it and how to install it:
    ``optional_import("safetensors.torch", "a .safetensors policy file", "pip install
    safetensors")``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs {module.split('.')[0]} ({exc}); `{install}`") from exc

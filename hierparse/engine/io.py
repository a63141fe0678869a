"""Files that are either complete or absent: atomic writes, JSON without NaN, writable folders."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` next to ``path``, then rename it over ``path``.

    A crash or an exception leaves any previous ``path`` untouched and no temporary file behind.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically."""
    atomic_write(path, lambda temporary: torch.save(obj, temporary))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda temporary: temporary.write_text(text))


def json_safe(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None, so it serialises as strict JSON (``null``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def to_json(value: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``value`` (NaN and infinities as ``null``)."""
    return json.dumps(json_safe(value), indent=indent, allow_nan=False)


def writable_dir(path: str | Path, what: str = "output folder") -> Path:
    """Create ``path`` if needed and check that files can be created in it; one-line error if not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise PermissionError(f"{what} {path} is not writable: {error.strerror or error}") from None
    return path

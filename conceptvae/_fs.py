"""Atomic file and directory writing.

Outputs are never left half-written: files are written to a temporary sibling and renamed into
place; directories are built in a hidden staging sibling and renamed into place when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from conceptvae.errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, fsync, then rename it to ``path``.

    Whatever fails (a full disk, an exception in ``write``, Ctrl-C), ``path`` keeps its old
    content and no temporary file is left.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_output_dir(path: str | os.PathLike, force: bool = False) -> Path:
    """Refuse an output directory that exists and is not empty, unless ``force``.

    Returns the path. Raises :class:`OutputError` with a message naming the folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} exists and is not a folder: choose another path")
    if path.is_dir() and any(path.iterdir()) and not force:
        raise OutputError(
            f"output folder {path} exists and is not empty: choose another folder, "
            "or pass --force to replace it"
        )
    return path


@contextlib.contextmanager
def staged_dir(path: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a hidden staging sibling; move it to ``path`` only on success.

    On any exception (including KeyboardInterrupt) the staging directory is removed and ``path``
    is left exactly as it was. With ``force``, an existing non-empty ``path`` is replaced only
    after the new content is complete.
    """
    path = check_output_dir(path, force)
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=parent))
    os.chmod(stage, 0o777 & ~_umask())  # mkdtemp makes 0700; the result gets the usual mode
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    publish_dir(stage, path, force)


def publish_dir(stage: str | os.PathLike, path: str | os.PathLike, force: bool = False) -> None:
    """Move the complete directory ``stage`` to ``path`` (same filesystem) by renaming.

    With ``force``, an existing non-empty ``path`` is renamed aside first and deleted only once
    ``stage`` is in its place; without it, a non-empty ``path`` raises :class:`OutputError`.
    """
    path = Path(path)
    if path.exists() and force and (not path.is_dir() or any(path.iterdir())):
        trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.absolute().parent))
        os.replace(path, trash / "old")
        os.replace(stage, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        check_output_dir(path, force=False)
        os.replace(stage, path)


def json_safe(obj: Any, digits: int | None = None) -> Any:
    """A JSON-ready copy of ``obj``: dicts (keys as strings), lists for tuples and arrays,
    numpy numbers as Python ones, non-finite floats as None; floats rounded to ``digits``
    decimals when given."""
    import math

    import numpy as np

    if isinstance(obj, dict):
        return {str(k): json_safe(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v, digits) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), digits)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        if not math.isfinite(obj):
            return None
        return float(obj) if digits is None else round(float(obj), digits)
    return obj

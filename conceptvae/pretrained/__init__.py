"""Models shipped inside the package, usable by name wherever a RUN folder is asked for.

``synthfaces64``: a 64 px ConceptVAE trained on 20,000 SynthFaces on a 2-core CPU, with concept
vectors for every rendered attribute; see its ``MODEL_CARD.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.name for p in HERE.iterdir() if (p / "config.json").is_file())


def resolve(run: str | os.PathLike) -> Path:
    """``run`` as a folder: itself when it exists, else the shipped model of that name.

    A path that names neither is returned unchanged, so the caller's own "does not exist"
    message (which names the path) applies.
    """
    path = Path(run)
    if path.exists():
        return path
    shipped = HERE / str(run)
    if os.sep not in str(run) and (shipped / "config.json").is_file():
        return shipped
    return path


def is_shipped(run: str | os.PathLike) -> bool:
    """True when ``run`` resolves to a model inside the package (read-only for users)."""
    try:
        return resolve(run).resolve().is_relative_to(HERE)
    except OSError:
        return False

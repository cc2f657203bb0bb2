"""Turning numpy arrays and torch tensors into numpy arrays, without importing torch."""

from __future__ import annotations

from typing import Any

import numpy as np

from attributes.errors import VectorError


def to_numpy(x: Any) -> np.ndarray:
    """Any array-like, numpy or torch (duck-typed by ``.detach``), as numpy; no copy if possible."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        try:
            x = x.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            x = x.float().numpy()
    return np.asarray(x)


def as_array(x: Any, name: str, ndim: int) -> np.ndarray:
    """``x`` (numpy, torch or nested lists) as a numpy array with exactly ``ndim`` dimensions.

    Raises :class:`VectorError` naming ``name`` and the shape found when the number of
    dimensions is wrong. Torch tensors are detached and moved to the CPU first.
    """
    arr = to_numpy(x)
    if arr.ndim != ndim:
        raise VectorError(
            f"{name} must be {ndim}-D, got shape {tuple(arr.shape)} ({arr.ndim}-D); "
            f"pass {name} with {ndim} dimension{'s' if ndim != 1 else ''}"
        )
    return arr

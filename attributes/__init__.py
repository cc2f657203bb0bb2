"""Concept-vector math on any (N, D) latent array (numpy or torch); imports nothing from conceptvae.

- :class:`AttributeVectors`: fit one vector per binary label (``mean``, ``balanced``,
  ``classifier``, ``conditional``), scikit-learn style.
- :class:`VectorBank`: named vectors, edit expressions (``"Smiling - 0.5*Male"``), save / load.
- :func:`quality_report`: held-out AUC, norms, cosine similarities and label confounds.

``Report`` and ``quality_report`` are imported on first use: the report needs scikit-learn,
which editing a photo (``attributes.bank``) does not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attributes.bank import Term, VectorBank
from attributes.errors import UnreliableVectorWarning, VectorError
from attributes.estimators import AttributeVectors, mean_difference, project_out

if TYPE_CHECKING:
    from attributes.report import Report, quality_report

_LAZY = {"Report": "attributes.report", "quality_report": "attributes.report"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'attributes' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AttributeVectors",
    "Report",
    "Term",
    "UnreliableVectorWarning",
    "VectorBank",
    "VectorError",
    "mean_difference",
    "project_out",
    "quality_report",
]

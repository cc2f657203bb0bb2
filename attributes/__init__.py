"""Concept-vector math on any (N, D) latent array (numpy or torch); imports nothing from conceptvae.

- :class:`AttributeVectors`: fit one vector per binary label (``mean``, ``balanced``,
  ``classifier``, ``conditional``), scikit-learn style.
- :class:`VectorBank`: named vectors, edit expressions (``"Smiling - 0.5*Male"``), save / load.
- :func:`quality_report`: held-out AUC, norms, cosine similarities and label confounds.
"""

from attributes.bank import Term, VectorBank
from attributes.errors import UnreliableVectorWarning, VectorError
from attributes.estimators import AttributeVectors, mean_difference, project_out
from attributes.report import Report, quality_report

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

"""conceptvae: edit face photos with concept vectors in the latent space of a convolutional VAE.

The package imports nothing heavy: ``CELEBA_ATTRIBUTES`` and ``LabelledImages`` (numpy) load on
first use, and torch, OpenCV and scikit-learn only with the modules that need them, so the
command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from conceptvae.errors import ConceptVAEError, DataError, OutputError

if TYPE_CHECKING:
    from conceptvae.data import CELEBA_ATTRIBUTES, LabelledImages

__version__ = "0.1.0"

_LAZY = {"CELEBA_ATTRIBUTES": "conceptvae.data", "LabelledImages": "conceptvae.data"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # the next look-up is a plain attribute
        return value
    raise AttributeError(f"module 'conceptvae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CELEBA_ATTRIBUTES",
    "ConceptVAEError",
    "DataError",
    "LabelledImages",
    "OutputError",
    "__version__",
]

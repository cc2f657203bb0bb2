"""User-facing errors.

Every error a user can cause by what they pass in (a wrong path, a malformed file, a bad option)
is raised as a :class:`ConceptVAEError` subclass whose message says what was wrong, where, and
what to do. The CLI prints such messages as one line on stderr and exits non-zero; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class ConceptVAEError(Exception):
    """Base class for errors caused by user input; the message is meant to be shown as is."""


class DataError(ConceptVAEError):
    """A dataset, label file or image that cannot be read as given."""


class OutputError(ConceptVAEError):
    """An output location that cannot be written (exists and is not empty, not writable, ...)."""


class ModelError(ConceptVAEError):
    """A model directory or configuration that cannot be used (missing, truncated, mismatched)."""


class TrainError(ConceptVAEError):
    """A training run that cannot start or go on (bad settings, no checkpoint, a diverged loss)."""

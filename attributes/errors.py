"""Errors and warnings of the ``attributes`` package.

Every problem a user can cause with what they pass in (labels with no positives, latents with
NaN, an unknown attribute name, an expression that does not parse, a bank made for another model)
is a :class:`VectorError` whose message says what was wrong and what to do. It subclasses
``ValueError`` so plain Python callers can catch it the usual way; the ``conceptvae`` command
line prints it as one line.
"""

from __future__ import annotations


class VectorError(ValueError):
    """Input that cannot give a concept vector, or a vector bank that cannot be used as asked."""


class UnreliableVectorWarning(UserWarning):
    """A vector fitted from so few examples (under ``min_count`` in a class) that it is noise."""

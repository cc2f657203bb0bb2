"""VectorBank: named concept vectors, edit expressions ("Smiling - 0.5*Male"), save and load.

An expression is a sum of terms. Each term is an attribute name, optionally conditioned with
``@`` (the component along the conditions is projected out) and scaled by numbers::

    Smiling                     Smiling at +1
    Smiling + 1.5               a number right after a plain name is its strength: Smiling at 1.5
    Smiling+1-0.5*Male          Smiling at +1, Male at -0.5
    -1.5 * Eyeglasses + Male    coefficients multiply with '*', on either side of the name
    Smiling@Male@Young          Smiling with its components along Male and Young removed
    Smiling@(Male, Young)       the same
    'Wearing Hat' + 1           names that are not letters, digits and '_' are quoted

Expressions are parsed by a small tokenizer and recursive-descent parser; nothing is evaluated.
A bank on disk is ``vectors.safetensors`` (one float32 tensor per name) and ``vectors.json``
(names in order, dim, provenance), plus ``footprints.safetensors`` when the vectors have
footprints (where on the image each one acts: one (H, W) float32 map per name); nothing is
ever unpickled. A bank with swaps (``attributes.groups``: adding a hair colour to a face that
shows another) also writes ``swaps.safetensors``: each exclusive group's classifier and each
swap's vector and footprint, listed in ``vectors.json``.

Strengths: a bank may record, per vector, a ``removal`` scale (``metadata["removal_scale"]``
{name: float}). A term with a negative coefficient is multiplied by it, so that ``-1`` removes
an attribute as clearly as ``+1`` adds it when the two need different steps (calibrated banks,
docs/vectors.md). Without it, removing is the same step backwards.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import difflib
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from attributes._arrays import as_array, to_numpy
from attributes.errors import VectorError
from attributes.estimators import project_out
from attributes.groups import GroupClassifier

VECTORS_NAME = "vectors.safetensors"
INFO_NAME = "vectors.json"
FOOTPRINTS_NAME = "footprints.safetensors"
SWAPS_NAME = "swaps.safetensors"
# metadata entries that are {name: ...} dicts, kept in step with the vectors they describe
_PER_VECTOR_KEYS = (
    "counts", "norms", "effective_counts", "coverage", "confounders", "preserved", "removal_scale",
    "calibration", "problems", "vectors",
)  # fmt: skip
FORMAT_VERSION = 1

_NUMBER = re.compile(r"(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z0-9_]+")
_OPERATORS = "+-*@(),"


@dataclass(frozen=True)
class Term:
    """``coef`` times the vector of ``name``, with the span of ``condition`` projected out."""

    coef: float
    name: str
    condition: tuple[str, ...] = ()

    def __str__(self) -> str:
        cond = "".join("@" + _quote(c) for c in self.condition)
        return f"{self.coef:+g}*{_quote(self.name)}{cond}"


def _needs_quotes(name: str) -> bool:
    word = _WORD.fullmatch(name)
    number = _NUMBER.match(name)
    return word is None or (number is not None and number.end() == len(name))


def _quote(name: str) -> str:
    if not _needs_quotes(name):
        return name
    return f'"{name}"' if "'" in name else f"'{name}'"


# -- the expression parser ---------------------------------------------------------------------


@dataclass
class _Token:
    kind: str  # "num", "name", one of _OPERATORS, or "end"
    text: str
    pos: int
    value: float = 0.0


class _Parser:
    def __init__(self, expr: str, resolve: Any) -> None:
        self.expr = expr
        self.shown = re.sub(r"\s", " ", expr)  # keeps messages on one line and positions exact
        self.resolve = resolve  # name -> canonical name, raising VectorError when unknown
        self.tokens = self._tokenize()
        self.i = 0

    # tokens -----------------------------------------------------------------------------------

    def fail(self, pos: int, what: str, hint: str) -> VectorError:
        pointer = self.shown[:pos] + "▸" + self.shown[pos:]
        return VectorError(
            f'cannot parse "{self.shown}": {what} at position {pos}: "{pointer}"; {hint}'
        )

    def _tokenize(self) -> list[_Token]:
        s, i, out = self.expr, 0, []
        while i < len(s):
            ch = s[i]
            if ch.isspace():
                i += 1
            elif ch in _OPERATORS:
                out.append(_Token(ch, ch, i))
                i += 1
            elif ch in "'\"":
                end = s.find(ch, i + 1)
                if end < 0:
                    raise self.fail(i, f"unclosed quote {ch}", f"close the quoted name with {ch}")
                out.append(_Token("name", s[i + 1 : end], i))
                i = end + 1
            else:
                word, number = _WORD.match(s, i), _NUMBER.match(s, i)
                # A number wins when it reaches at least as far as the word ("1e-1", "1.5");
                # otherwise a word with a letter or '_' is a name ("5_o_Clock_Shadow").
                if number and (word is None or number.end() >= word.end()):
                    value = float(number.group())
                    if not math.isfinite(value):
                        raise self.fail(
                            i, f"the number {number.group()} is too large", "use a smaller strength"
                        )
                    out.append(_Token("num", number.group(), i, value))
                    i = number.end()
                elif word:
                    out.append(_Token("name", word.group(), i))
                    i = word.end()
                else:
                    raise self.fail(
                        i,
                        f"unexpected character {ch!r}",
                        "use names, numbers, + - * @ ( ) , and quotes around unusual names",
                    )
        out.append(_Token("end", "", len(s)))
        return out

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def _after_operator(self, op: _Token) -> None:
        if self.peek().kind == "end":
            what = "an attribute name" if op.kind in "@,(" else "a term"
            raise self.fail(
                op.pos, f"nothing after {op.text!r}", f"add {what} after it or remove it"
            )

    def _unexpected(self, tok: _Token, hint: str) -> VectorError:
        if tok.kind == ")":
            return self.fail(tok.pos, "unmatched ')'", "remove it, or open it with '(' after '@'")
        if tok.kind == "(":
            return self.fail(
                tok.pos,
                "unexpected '('",
                'parentheses only group conditions, like "Smiling@(Male, Young)"',
            )
        if tok.kind == "end":
            return self.fail(tok.pos, "the expression ends early", hint)
        if tok.kind == ",":
            return self.fail(
                tok.pos,
                "unexpected ','",
                'list conditions in parentheses, like "Smiling@(Male, Young)"',
            )
        shown = repr(tok.text) if tok.kind != "num" else tok.text
        return self.fail(tok.pos, f"unexpected {shown}", hint)

    def _name(self, tok: _Token) -> str:
        return self.resolve(tok.text, f' at position {tok.pos} of "{self.shown}"')

    # grammar ----------------------------------------------------------------------------------
    # expr   := ['+'|'-'] term (('+'|'-') term)* END
    # term   := factor ('*' factor)*        one factor names an attribute, the rest are numbers;
    #                                       a lone number after a plain name is its strength
    # factor := NUMBER | NAME ('@' cond)*
    # cond   := NAME | '(' NAME (',' NAME)* ')'

    def parse(self) -> list[Term]:
        if self.peek().kind == "end":
            raise VectorError(
                "empty edit expression: write attribute names with optional strengths, "
                'like "Smiling + 1.5" or "Smiling - 0.5*Male"'
            )
        terms: list[Term] = []
        plain = False  # is the last term a lone '+name', which a following number may scale?
        sign, signed = 1.0, False
        if self.peek().kind in "+-":
            op = self.take()
            self._after_operator(op)
            sign, signed = (1.0 if op.kind == "+" else -1.0), op.kind == "-"
        while True:
            start = self.peek()
            term, lone = self.term(sign)
            if term is None:  # a lone number: the strength of the previous term
                if not terms:
                    raise self.fail(
                        start.pos,
                        f"the number {start.text} has no attribute",
                        'name one, like "Smiling + 1.5" or "1.5*Smiling"',
                    )
                if not plain:
                    raise self.fail(
                        start.pos,
                        f"the strength {start.text} does not follow a plain attribute name",
                        'write a strength right after a name, like "Smiling + 1.5", '
                        'or write the coefficient once, like "-1.5*Smiling"',
                    )
                prev = terms[-1]
                terms[-1] = Term(sign * start.value, prev.name, prev.condition)
                plain = False
            else:
                terms.append(term)
                plain = lone and not signed
            tok = self.peek()
            if tok.kind == "end":
                return terms
            if tok.kind not in "+-":
                raise self._unexpected(tok, "join terms with '+' or '-', and scale them with '*'")
            op = self.take()
            self._after_operator(op)
            sign, signed = (1.0 if op.kind == "+" else -1.0), op.kind == "-"

    def term(self, sign: float) -> tuple[Term | None, bool]:
        """A term, or (None, False) for a lone number; the bool says 'a lone name'."""
        coef, named, n_factors = sign, None, 0
        while True:
            tok = self.peek()
            if tok.kind == "num":
                coef *= self.take().value
            elif tok.kind == "name":
                if named is not None:
                    raise self.fail(
                        tok.pos,
                        f"cannot multiply two attributes ({named[0]!r} and {tok.text!r})",
                        "add or subtract them instead",
                    )
                named = (self._name(self.take()), self.conditions(tok))
            else:
                raise self._unexpected(tok, "expected an attribute name or a number")
            n_factors += 1
            if self.peek().kind != "*":
                break
            op = self.take()
            self._after_operator(op)
        if named is None:
            if n_factors == 1:
                return None, False
            raise self.fail(tok.pos, "this product has no attribute", 'name one, like "2*Smiling"')
        return Term(coef, named[0], named[1]), n_factors == 1

    def conditions(self, target_tok: _Token) -> tuple[str, ...]:
        target = self.resolve(target_tok.text)
        found: list[str] = []
        while self.peek().kind == "@":
            at = self.take()
            self._after_operator(at)
            if self.peek().kind == "(":
                opened = self.take()
                while True:
                    if self.peek().kind == "end":
                        raise self.fail(
                            opened.pos, "unclosed '('", "close the list of conditions with ')'"
                        )
                    found.append(self.condition(target))
                    tok = self.peek()
                    if tok.kind == ",":
                        self._after_operator(self.take())
                    elif tok.kind == ")":
                        self.take()
                        break
                    elif tok.kind == "end":
                        raise self.fail(
                            opened.pos, "unclosed '('", "close the list of conditions with ')'"
                        )
                    else:
                        raise self._unexpected(
                            tok, "separate conditions with ',' and close with ')'"
                        )
            else:
                found.append(self.condition(target))
        return tuple(dict.fromkeys(found))  # "Smiling@Male@Male" is "Smiling@Male"

    def condition(self, target: str) -> str:
        tok = self.peek()
        if tok.kind == ")":
            raise self.fail(tok.pos, "no condition before ')'", 'name one, like "Smiling@(Male)"')
        if tok.kind != "name":
            raise self._unexpected(tok, 'expected an attribute name, like "Smiling@Male"')
        name = self._name(self.take())
        if name == target:
            raise self.fail(
                tok.pos,
                f"{name!r} cannot be conditioned on itself",
                'condition on other attributes, like "Smiling@Male"',
            )
        return name


# -- the bank ----------------------------------------------------------------------------------


class VectorBank:
    """Named concept vectors of one latent space, looked up case-insensitively.

    ``vectors`` maps each name to a (D,) array (numpy or torch); all share one D. ``metadata``
    is a JSON-safe dict of provenance (``method``, ``label_source``, ``counts`` {name: [neg,
    pos]}, ``norms`` {name: float}, ``model_hash``, ``removal_scale`` {name: float}, ...), kept
    as given. ``footprints`` maps some of the names to (H, W) maps of where on the image the
    vector acts (non-negative; all of one shape).
    """

    def __init__(
        self,
        vectors: Mapping[str, Any],
        *,
        metadata: dict[str, Any] | None = None,
        footprints: Mapping[str, Any] | None = None,
        groups: Sequence[GroupClassifier] = (),
        swaps: Mapping[str, Mapping[str, Any]] | None = None,
        swap_footprints: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        if not isinstance(vectors, Mapping) or len(vectors) == 0:
            raise VectorError(
                "a VectorBank needs a non-empty mapping of names to (D,) vectors, got "
                f"{type(vectors).__name__ if not isinstance(vectors, Mapping) else 'an empty one'}"
            )
        if metadata is not None and not isinstance(metadata, dict):
            raise VectorError(f"metadata must be a dict, got {type(metadata).__name__}")
        names: list[str] = []
        rows: list[np.ndarray] = []
        lookup: dict[str, str] = {}
        for name, vec in vectors.items():
            if not isinstance(name, str) or not name.strip():
                raise VectorError(f"vector names must be non-empty strings, got {name!r}")
            if name.lower() in lookup:
                raise VectorError(
                    f"vector names {lookup[name.lower()]!r} and {name!r} differ only in case; "
                    "names are case-insensitive, so rename one"
                )
            arr = as_array(vec, f"the vector {name!r}", 1).astype(np.float32)
            if rows and arr.shape != rows[0].shape:
                raise VectorError(
                    f"the vector {name!r} has {arr.shape[0]} dimensions but {names[0]!r} has "
                    f"{rows[0].shape[0]}; all vectors of a bank share one latent space"
                )
            if not np.isfinite(arr).all():
                raise VectorError(f"the vector {name!r} has NaN or infinite values; refit it")
            lookup[name.lower()] = name
            names.append(name)
            rows.append(arr)
        self._names = names
        self._lookup = lookup
        self._matrix = np.stack(rows)  # (A, D) float32
        self._matrix.setflags(write=False)
        self._metadata = copy.deepcopy(metadata) if metadata else {}
        self._source: Path | None = None  # the folder a loaded bank came from, for messages
        self._footprints = self._check_footprints(footprints or {})
        self._groups, self._swaps, self._swap_fps = self._check_swaps(
            groups, swaps or {}, swap_footprints or {}
        )
        removal = self._metadata.get("removal_scale", {})
        if not isinstance(removal, dict) or not all(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in removal.values()
        ):
            raise VectorError(
                "metadata['removal_scale'] must map names to positive numbers; refit the bank"
            )

    def _check_footprints(self, footprints: Mapping[str, Any]) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, fp in footprints.items():
            key = self._lookup.get(str(name).lower())
            if key is None:
                raise VectorError(f"a footprint is given for {name!r}, which has no vector")
            shape = next(iter(out.values())).shape if out else None
            out[key] = _footprint_map(fp, f"the footprint of {name!r}", shape)
        return out

    def _check_swaps(self, groups, swaps, swap_fps):
        groups = list(groups)
        for g in groups:
            if not isinstance(g, GroupClassifier):
                raise VectorError(f"groups must be GroupClassifiers, got {type(g).__name__}")
            if g.weight.shape[1] != self.dim:
                raise VectorError(
                    f"the classifier of {', '.join(g.members)} has {g.weight.shape[1]} "
                    f"dimensions, the vectors {self.dim}"
                )
        out: dict[str, dict[str, np.ndarray]] = {}
        fps: dict[str, dict[str, np.ndarray]] = {}
        shape = next(iter(self._footprints.values())).shape if self._footprints else None
        for name, rivals in swaps.items():
            key = self._lookup.get(str(name).lower())
            group = next((g for g in groups if key in g.members), None)
            if key is None or group is None:
                raise VectorError(
                    f"a swap is given for {name!r}, which has no vector or no exclusive group"
                )
            for rival, vec in rivals.items():
                if rival not in group.members or rival == key:
                    raise VectorError(
                        f"the swap of {key} from {rival!r}: {rival!r} is not another label of "
                        f"its group ({', '.join(group.members)})"
                    )
                arr = as_array(vec, f"the swap of {key} from {rival}", 1).astype(np.float32)
                if arr.shape != (self.dim,) or not np.isfinite(arr).all():
                    raise VectorError(
                        f"the swap of {key} from {rival} must be ({self.dim},) and finite"
                    )
                arr.setflags(write=False)
                out.setdefault(key, {})[rival] = arr
                fp = (swap_fps.get(name) or {}).get(rival)
                if fp is not None:
                    what = f"the footprint of the swap of {key} from {rival}"
                    fps.setdefault(key, {})[rival] = _footprint_map(fp, what, shape)
        return groups, out, fps

    @property
    def groups(self) -> list[GroupClassifier]:
        """The exclusive groups' classifiers (:class:`attributes.groups.GroupClassifier`)."""
        return list(self._groups)

    @property
    def swaps(self) -> dict[str, dict[str, np.ndarray]]:
        """name -> rival -> the (D,) step that adds ``name`` to a face showing ``rival`` (its
        strength 1), for the names whose adding depends on which label of their exclusive
        group a face shows. Read-only arrays."""
        return {n: dict(r) for n, r in self._swaps.items()}

    @property
    def swap_footprints(self) -> dict[str, dict[str, np.ndarray]]:
        """name -> rival -> (H, W) footprint of that swap, for the swaps that have one."""
        return {n: dict(r) for n, r in self._swap_fps.items()}

    def swap_footprint(self, name: str, rival: str) -> np.ndarray | None:
        """The footprint of the swap of ``name`` from ``rival`` (None when it has none)."""
        return (self._swap_fps.get(self.canonical(name)) or {}).get(rival)

    def rivals(self, name: str, z: Any) -> list[str | None]:
        """Per row of ``z`` (N, D) or for one (D,) latent, as a list: the rival whose swap
        adds ``name`` to that face (the label of ``name``'s exclusive group the face shows,
        where the bank has that swap), None where ``name``'s own vector does."""
        arr = to_numpy(z).astype(np.float32)
        arr = arr[None] if arr.ndim == 1 else arr
        key = self.canonical(name)
        swaps = self._swaps.get(key)
        if not swaps:
            return [None] * arr.shape[0]
        group = next(g for g in self._groups if key in g.members)
        return [r if r in swaps else None for r in group.predict(arr)]

    @property
    def footprints(self) -> dict[str, np.ndarray]:
        """name -> (H, W) float32 map of where decoding the vector changes the image (mean
        absolute change per pixel over faces); only for vectors that have one. Read-only."""
        return dict(self._footprints)

    def removal_scale(self, name: str) -> float:
        """The factor a negative coefficient of ``name`` is multiplied by (1 when unknown)."""
        return float(self._metadata.get("removal_scale", {}).get(self.canonical(name), 1.0))

    @classmethod
    def from_estimator(cls, est: Any, **provenance: Any) -> VectorBank:
        """A bank of a fitted ``AttributeVectors``; ``provenance`` (label_source, model_hash,
        ...) joins the metadata beside the estimator's method, class counts and norms."""
        if not hasattr(est, "vectors_") or not hasattr(est, "names_"):
            raise VectorError(
                f"{type(est).__name__} is not fitted (no vectors_ / names_): call fit first"
            )
        names = [str(n) for n in est.names_]
        matrix = as_array(est.vectors_, "the estimator's vectors_", 2)
        if matrix.shape[0] != len(names):
            raise VectorError(
                f"the estimator has {matrix.shape[0]} vectors but {len(names)} names; refit it"
            )
        meta: dict[str, Any] = {"method": str(getattr(est, "method", "unknown"))}
        counts = getattr(est, "counts_", None)
        if counts is not None:
            counts = as_array(counts, "the estimator's counts_", 2)
            meta["counts"] = {n: [int(c) for c in row] for n, row in zip(names, counts)}
        norms = getattr(est, "norms_", None)
        norms = np.linalg.norm(matrix, axis=1) if norms is None else as_array(norms, "norms_", 1)
        meta["norms"] = {n: float(v) for n, v in zip(names, norms)}
        effective = getattr(est, "effective_counts_", None)
        if effective is not None:
            effective = as_array(effective, "the estimator's effective_counts_", 2)
            meta["effective_counts"] = {
                n: [float(c) for c in row] for n, row in zip(names, effective)
            }
        if meta["method"] == "conditional":
            cond = getattr(est, "condition_", None)
            if cond is None:
                cond = getattr(est, "condition", ())
                cond = [cond] if isinstance(cond, str) else list(cond)
            meta["condition"] = _plain(list(cond))
            meta["base"] = _plain(getattr(est, "base", None))
        if meta["method"] == "orthogonal":
            meta["base"] = _plain(getattr(est, "base", None))
        # which labels each vector was balanced on, and (orthogonal) kept fixed
        for key in ("confounders_", "coverage_", "preserved_"):
            value = getattr(est, key, None)
            if isinstance(value, dict) and value:
                meta[key.rstrip("_")] = _plain(value)
        meta.update(provenance)
        return cls(dict(zip(names, matrix)), metadata=meta)

    # lookup -----------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return list(self._names)

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    @property
    def metadata(self) -> dict[str, Any]:
        return copy.deepcopy(self._metadata)

    @property
    def matrix(self) -> np.ndarray:
        """(A, D) float32, rows in the order of ``names``; read-only."""
        return self._matrix

    def __len__(self) -> int:
        return len(self._names)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup

    def __getitem__(self, name: str) -> np.ndarray:
        """The (D,) float32 vector of ``name`` (any case); read-only."""
        return self._matrix[self._names.index(self.canonical(name))]

    def __repr__(self) -> str:
        shown = ", ".join(self._names[:5]) + (", ..." if len(self) > 5 else "")
        return f"VectorBank({len(self)} vectors, dim {self.dim}: {shown})"

    def canonical(self, name: str, where: str = "") -> str:
        """``name`` as the bank spells it; VectorError with close matches when unknown
        (``where``, like ``" at position 3 of ..."``, goes right after the name)."""
        if not isinstance(name, str):
            raise VectorError(f"attribute names are strings, got {type(name).__name__}")
        found = self._lookup.get(name.lower())
        if found is not None:
            return found
        close = difflib.get_close_matches(name.lower(), list(self._lookup), n=3, cutoff=0.6)
        known = ", ".join(self._names[:8]) + (
            f", ... ({len(self)} in all)" if len(self) > 8 else ""
        )
        if close:
            guesses = " or ".join(repr(self._lookup[c]) for c in close)
            raise VectorError(
                f"unknown attribute {name!r}{where}: did you mean {guesses}? (known: {known})"
            )
        raise VectorError(
            f"unknown attribute {name!r}{where}: use one of the known names ({known})"
        )

    # expressions ------------------------------------------------------------------------------

    def parse(self, expr: str) -> list[Term]:
        """The terms of ``expr`` in order, names in the bank's spelling; VectorError if it does
        not parse (the message gives the position)."""
        if not isinstance(expr, str):
            raise VectorError(f"an edit expression is a string, got {type(expr).__name__}")
        return _Parser(expr, self.canonical).parse()

    def vector(self, expr: str | Sequence[Term], scale: float = 1.0) -> np.ndarray:
        """(D,) float32: ``scale`` times the sum of each term's coefficient times its vector,
        with the term's conditions projected out. Repeated names add up. A negative
        coefficient (or a positive one times a negative ``scale``) is also multiplied by the
        name's :meth:`removal_scale`."""
        terms = self.parse(expr) if isinstance(expr, str) else list(expr)
        if not isinstance(scale, (int, float, np.number)) or not math.isfinite(scale):
            raise VectorError(f"scale must be a finite number, got {scale!r}")
        out = np.zeros(self.dim, dtype=np.float64)
        for t in terms:
            if not isinstance(t, Term):
                raise VectorError(f"expected an expression string or Terms, got {t!r}")
            vec = self[t.name].astype(np.float64)
            if t.condition:
                others = np.stack([self[c] for c in t.condition]).astype(np.float64)
                vec = np.asarray(project_out(vec, others), dtype=np.float64)
            negative = t.coef * scale < 0  # removing, whichever of the two says so
            out += t.coef * vec * (self.removal_scale(t.name) if negative else 1.0)
        return (scale * out).astype(np.float32)

    def describe(self, expr: str | Sequence[Term]) -> str:
        """Canonical text of ``expr``, like ``"+1.5*Smiling@Male -0.5*Young"``: one term per
        distinct (name, conditions), coefficients summed. It parses back to the same vector."""
        terms = self.parse(expr) if isinstance(expr, str) else list(expr)
        merged: dict[tuple[str, tuple[str, ...]], float] = {}
        for t in terms:
            key = (t.name, t.condition)
            merged[key] = merged.get(key, 0.0) + t.coef
        return " ".join(str(Term(c, n, cond)) for (n, cond), c in merged.items())

    # new banks --------------------------------------------------------------------------------

    def subset(self, names: Sequence[str]) -> VectorBank:
        """A bank of ``names`` only (any case, in the order given), metadata kept for them."""
        if isinstance(names, str):
            names = [names]
        keep = [self.canonical(n) for n in names]
        meta = self.metadata
        for key in _PER_VECTOR_KEYS:
            if isinstance(meta.get(key), dict):
                meta[key] = {n: v for n, v in meta[key].items() if n in keep}
        return self._derived({n: self[n] for n in keep}, meta)

    def with_vector(self, name: str, vec: Any) -> VectorBank:
        """A new bank with ``vec`` added as ``name`` (or replacing it, in place in the order).
        The replaced name's counts, norms, scale, calibration and footprint are dropped: they
        no longer describe it."""
        vectors = {n: self._matrix[i] for i, n in enumerate(self._names)}
        meta = self.metadata
        if name in self:
            old = self.canonical(name)
            vectors = {(name if n == old else n): v for n, v in vectors.items()}
            for key in _PER_VECTOR_KEYS:
                if isinstance(meta.get(key), dict):
                    meta[key].pop(old, None)
        vectors[name] = vec
        return self._derived(vectors, meta, drop=self.canonical(name) if name in self else None)

    def _derived(
        self, vectors: dict[str, Any], meta: dict[str, Any], drop: str | None = None
    ) -> VectorBank:
        fps = {n: f for n, f in self._footprints.items() if n in vectors and n != drop}
        keep = [n for n in self._swaps if n in vectors and n != drop]
        bank = VectorBank(
            vectors, metadata=meta, footprints=fps, groups=self._groups,
            swaps={n: self._swaps[n] for n in keep},
            swap_footprints={n: self._swap_fps.get(n, {}) for n in keep},
        )  # fmt: skip
        bank._source = self._source
        return bank

    # files ------------------------------------------------------------------------------------

    def check_model(self, model_hash: str) -> None:
        """VectorError unless these vectors were made for the model with ``model_hash``."""
        where = f"vectors in {self._source}" if self._source else "these vectors"
        saved = self._metadata.get("model_hash")
        if saved is None:
            raise VectorError(
                f"{where} record no model hash, so they cannot be checked against this model "
                f"(hash {model_hash}): run `conceptvae vectors` for this model"
            )
        if str(saved) != str(model_hash):
            raise VectorError(
                f"{where} were made for another model (hash {saved}, this model {model_hash}): "
                "run `conceptvae vectors` for this model"
            )

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``vectors.safetensors`` then ``vectors.json`` into ``directory`` (created if
        missing), each atomically. Returns the directory."""
        directory = Path(directory)
        try:
            info = json.dumps(
                {
                    "format_version": FORMAT_VERSION,
                    "library_version": _library_version(),
                    "created": datetime.datetime.now(datetime.timezone.utc)
                    .isoformat(timespec="seconds")
                    .replace("+00:00", "Z"),
                    "dim": self.dim,
                    "names": self._names,
                    "footprints": list(self._footprints),
                    **({"swaps": self._swap_listing()} if self._groups else {}),
                    "metadata": self._metadata,
                },
                indent=2,
                allow_nan=False,
            )
        except (TypeError, ValueError) as e:
            raise VectorError(
                f"the bank's metadata cannot be written as JSON ({e}); "
                "keep it to strings, numbers, lists and dicts"
            ) from None
        if "__metadata__" in self._names:
            raise VectorError("'__metadata__' is reserved by safetensors; rename that vector")
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: np.ascontiguousarray(self._matrix[i]) for i, n in enumerate(self._names)}
        _atomic_write(directory / VECTORS_NAME, save_safetensors(tensors))
        if self._footprints:
            fps = {n: np.ascontiguousarray(f) for n, f in self._footprints.items()}
            _atomic_write(directory / FOOTPRINTS_NAME, save_safetensors(fps))
        else:  # a stale file would not be read (vectors.json lists none), but do not leave it
            with contextlib.suppress(FileNotFoundError):
                (directory / FOOTPRINTS_NAME).unlink()
        if self._groups:
            _atomic_write(directory / SWAPS_NAME, save_safetensors(self._swap_tensors()))
        else:
            with contextlib.suppress(FileNotFoundError):
                (directory / SWAPS_NAME).unlink()
        _atomic_write(directory / INFO_NAME, (info + "\n").encode("utf-8"))  # last: complete
        return directory

    def _swap_pairs(self) -> list[tuple[str, str]]:
        return [(n, r) for n, rivals in self._swaps.items() for r in rivals]

    def _swap_listing(self) -> dict[str, Any]:
        return {
            "groups": [list(g.members) for g in self._groups],
            "pairs": [list(p) for p in self._swap_pairs()],
            "footprints": [
                list(p) for p in self._swap_pairs() if self.swap_footprint(*p) is not None
            ],
        }

    def _swap_tensors(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, g in enumerate(self._groups):
            out[f"group{i}.weight"] = np.ascontiguousarray(g.weight)
            out[f"group{i}.bias"] = np.ascontiguousarray(g.bias)
        for j, (n, r) in enumerate(self._swap_pairs()):
            out[f"swap{j}"] = np.ascontiguousarray(self._swaps[n][r])
            fp = self.swap_footprint(n, r)
            if fp is not None:
                out[f"swap{j}.footprint"] = np.ascontiguousarray(fp)
        return out

    @staticmethod
    def _read_swaps(directory: Path, listing: Any) -> dict[str, Any]:
        """The ``groups``, ``swaps`` and ``swap_footprints`` of a saved bank's swap file."""
        path = directory / SWAPS_NAME
        ok = (
            isinstance(listing, dict)
            and isinstance(listing.get("groups"), list)
            and isinstance(listing.get("pairs"), list)
            and all(isinstance(p, list) and len(p) == 2 for p in listing["pairs"])
        )
        if not ok:
            raise VectorError(
                f"{directory / INFO_NAME} has a damaged swap listing: run `conceptvae vectors` "
                "again"
            )
        try:
            tensors = load_safetensors(path.read_bytes())
            groups = [
                GroupClassifier(tuple(m), tensors[f"group{i}.weight"], tensors[f"group{i}.bias"])
                for i, m in enumerate(listing["groups"])
            ]
            with_fp = {tuple(p) for p in listing.get("footprints") or []}
            swaps: dict[str, dict[str, np.ndarray]] = {}
            fps: dict[str, dict[str, np.ndarray]] = {}
            for j, (n, r) in enumerate(listing["pairs"]):
                swaps.setdefault(n, {})[r] = tensors[f"swap{j}"]
                if (n, r) in with_fp:
                    fps.setdefault(n, {})[r] = tensors[f"swap{j}.footprint"]
        except VectorError as e:
            raise VectorError(f"{path}: {e}") from None
        except Exception as e:  # missing, damaged, truncated, or a tensor it does not hold
            raise VectorError(
                f"{path} is missing or damaged ({type(e).__name__}: {e}): run `conceptvae "
                "vectors` again"
            ) from None
        return {"groups": groups, "swaps": swaps, "swap_footprints": fps}

    @classmethod
    def load(cls, directory: str | os.PathLike, *, model_hash: str | None = None) -> VectorBank:
        """Read a bank written by :meth:`save`. With ``model_hash``, also check it was made for
        that model. Raises VectorError naming the file for anything missing or damaged."""
        directory = Path(directory)
        tensor_path, info_path = directory / VECTORS_NAME, directory / INFO_NAME
        for path in (tensor_path, info_path):
            if not path.is_file():
                raise VectorError(
                    f"no concept vectors at {path}: run `conceptvae vectors` on {directory} first"
                )
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise VectorError(
                f"{info_path} is not valid JSON ({e}): run `conceptvae vectors` again"
            ) from None
        if not isinstance(info, dict):
            raise VectorError(f"{info_path} is not a vectors file: run `conceptvae vectors` again")
        version = info.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise VectorError(
                f"{info_path} has format_version {version!r}, this library reads up to "
                f"{FORMAT_VERSION}: upgrade conceptvae or run `conceptvae vectors` again"
            )
        names, dim, meta = info.get("names"), info.get("dim"), info.get("metadata", {})
        if (
            not isinstance(names, list)
            or not all(isinstance(n, str) for n in names)
            or not isinstance(dim, int)
            or not isinstance(meta, dict)
        ):
            raise VectorError(
                f"{info_path} lacks a list of names, an integer dim or a metadata dict: "
                "run `conceptvae vectors` again"
            )
        try:
            tensors = load_safetensors(tensor_path.read_bytes())
        except Exception as e:  # safetensors raises its own error type for damaged files
            raise VectorError(
                f"{tensor_path} is damaged or truncated ({e}): run `conceptvae vectors` again"
            ) from None
        if set(tensors) != set(names) or len(names) != len(tensors):
            missing = sorted(set(names) - set(tensors))
            extra = sorted(set(tensors) - set(names))
            raise VectorError(
                f"{tensor_path} does not match {info_path} (missing {missing}, unlisted {extra}): "
                "run `conceptvae vectors` again"
            )
        for n in names:
            t = tensors[n]
            if t.dtype != np.float32 or t.shape != (dim,):
                raise VectorError(
                    f"{tensor_path}: the vector {n!r} is {t.dtype} {t.shape}, expected float32 "
                    f"({dim},): run `conceptvae vectors` again"
                )
        fp_names = info.get("footprints") or []
        footprints: dict[str, np.ndarray] = {}
        if fp_names:
            fp_path = directory / FOOTPRINTS_NAME
            try:
                footprints = load_safetensors(fp_path.read_bytes())
            except Exception as e:  # missing, damaged or truncated
                raise VectorError(
                    f"{fp_path} is missing or damaged ({e}): run `conceptvae vectors` again"
                ) from None
            if not isinstance(fp_names, list) or set(fp_names) - set(footprints):
                raise VectorError(
                    f"{fp_path} does not hold the footprints {info_path} lists: run "
                    "`conceptvae vectors` again"
                )
            footprints = {n: footprints[n] for n in fp_names}
        swaps = cls._read_swaps(directory, info["swaps"]) if info.get("swaps") else {}
        try:
            bank = cls(
                {n: tensors[n] for n in names}, metadata=meta, footprints=footprints, **swaps
            )
        except VectorError as e:
            raise VectorError(f"{info_path}: {e}") from None
        bank._source = directory
        if model_hash is not None:
            bank.check_model(model_hash)
        return bank


def _footprint_map(fp: Any, what: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """``fp`` as a read-only float32 copy, checked to be an (H, W) map of non-negative finite
    values (of ``shape`` when given, the bank's other footprints'); VectorError names
    ``what``."""
    arr = np.array(fp, dtype=np.float32)
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise VectorError(f"{what} has shape {arr.shape}: it must be an (H, W) map")
    if shape is not None and arr.shape != shape:
        raise VectorError(f"{what} is {arr.shape}, unlike the others: one shape each")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise VectorError(f"{what} has negative or non-finite values")
    arr.setflags(write=False)
    return arr


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays, tuples and sets turned into JSON types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, np.ndarray)):
        return [_plain(v) for v in (obj.tolist() if isinstance(obj, np.ndarray) else obj)]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("conceptvae")
    except PackageNotFoundError:
        return "unknown"


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary sibling of ``path``, fsync, then rename it into place."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; a saved bank gets the usual mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

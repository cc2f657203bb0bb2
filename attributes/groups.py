"""Exclusive groups: labels of which a face shows at most one, and the swaps they call for.

CelebA's hair colours (``Black_Hair``, ``Blond_Hair``, ``Brown_Hair``, ``Gray_Hair``) are such
a group. Adding one of them is not one direction: brown hair is lighter than black and darker
than blond, so the mean difference "brown minus not brown" turns black hair brown and moves
blond hair further from brown. Adding ``A`` to a face that shows a rival ``R`` of its group is
a *swap*: the step from ``R``'s faces to ``A``'s, ``mean(z | A) - mean(z | R, not A)``. Which
rival a face shows is read off its latent by a linear classifier fitted on the same labels
(:class:`GroupClassifier`); a face that shows none of them gets ``A``'s own vector.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from attributes._arrays import as_array
from attributes.errors import VectorError
from attributes.estimators import _resolve

HAIR_COLOURS: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
# used when a label set has all their names (CelebA's, SynthFaces'); others pass their own.
# Each default is a list of alternatives, the first that the labels have and keep exclusive:
# a bald head shows no hair colour, so Bald joins the colours where the labels agree
DEFAULT_GROUPS: tuple[tuple[tuple[str, ...], ...], ...] = (((*HAIR_COLOURS, "Bald"), HAIR_COLOURS),)
# two labels of a group may both be on for at most this share of the rarer one's faces
MAX_OVERLAP = 0.10
MIN_SWAP_FACES = 20  # faces of each class a swap's two means rest on, at least


def check_group(
    labels: Any, names: Sequence[str], members: Sequence[str], where: str = "exclusive group"
) -> tuple[str, ...]:
    """``members`` in the labels' spelling, checked to be a group: at least two labels, each
    with faces, no two on together for more than ``MAX_OVERLAP`` of the rarer one's faces.
    VectorError says which pair overlaps and how much."""
    y = as_array(labels, "labels", 2) > 0
    names = list(names)
    cols = [_resolve(m, names, where) for m in members]
    if len(set(cols)) < 2:
        raise VectorError(f"{where}: name at least two different labels, got {list(members)}")
    counts = y[:, cols].sum(0)
    for c, n in zip(cols, counts):
        if n == 0:
            raise VectorError(f"{where}: no face has {names[c]}; leave it out of the group")
    for i, a in enumerate(cols):
        for j in range(i + 1, len(cols)):
            b = cols[j]
            both = int((y[:, a] & y[:, b]).sum())
            share = both / min(counts[i], counts[j])
            if share > MAX_OVERLAP:
                raise VectorError(
                    f"{where}: {names[a]} and {names[b]} are both on for {both} faces "
                    f"({share:.0%} of the rarer one's): a face may show only one label of an "
                    f"exclusive group (at most {MAX_OVERLAP:.0%} overlap); leave one out"
                )
    return tuple(names[c] for c in cols)


def default_groups(labels: Any, names: Sequence[str]) -> list[tuple[str, ...]]:
    """Per entry of ``DEFAULT_GROUPS``, its first alternative whose labels are all present
    and exclusive here (none where no alternative is)."""
    lower = {n.lower() for n in names}
    out = []
    for alternatives in DEFAULT_GROUPS:
        for group in alternatives:
            if all(m.lower() in lower for m in group):
                try:
                    out.append(check_group(labels, names, group))
                    break
                except VectorError:
                    continue  # not exclusive in these labels: try the next
    return out


def group_class(labels: Any, names: Sequence[str], members: Sequence[str]) -> np.ndarray:
    """(N,) int: the index in ``members`` of the label each face shows (the first, where a
    face shows several), ``len(members)`` for a face that shows none."""
    y = as_array(labels, "labels", 2) > 0
    cols = [_resolve(m, list(names), "exclusive group") for m in members]
    out = np.full(y.shape[0], len(cols), dtype=np.int64)
    for k in reversed(range(len(cols))):
        out[y[:, cols[k]]] = k
    return out


@dataclass
class GroupClassifier:
    """Which label of an exclusive group a latent shows: a multinomial linear classifier,
    ``argmax(z @ weight.T + bias)`` over the members and a last class, "none of them"."""

    members: tuple[str, ...]
    weight: np.ndarray  # (K + 1, D) float32
    bias: np.ndarray  # (K + 1,) float32

    def __post_init__(self) -> None:
        self.members = tuple(self.members)
        self.weight = np.asarray(self.weight, dtype=np.float32)
        self.bias = np.asarray(self.bias, dtype=np.float32)
        k = len(self.members) + 1
        if self.weight.ndim != 2 or self.weight.shape[0] != k or self.bias.shape != (k,):
            raise VectorError(
                f"a classifier of {len(self.members)} labels needs a ({k}, D) weight and a "
                f"({k},) bias, got {self.weight.shape} and {self.bias.shape}"
            )
        if not (np.isfinite(self.weight).all() and np.isfinite(self.bias).all()):
            raise VectorError(f"the classifier of {', '.join(self.members)} is not finite")

    @classmethod
    def fit(
        cls, z: Any, labels: Any, names: Sequence[str], members: Sequence[str], *, c: float = 1.0
    ) -> GroupClassifier:
        """Fitted on latents ``z`` (N, D) and their ``labels`` (N, A) of ``names``."""
        from sklearn.linear_model import LogisticRegression

        z = as_array(z, "z", 2).astype(np.float64)
        target = group_class(labels, names, members)
        k = len(members) + 1
        present = np.unique(target)
        if present.size < 2:
            raise VectorError(f"the faces show only one class of {', '.join(members)}")
        mu, sd = z.mean(0), z.std(0) + 1e-8  # standardised: one C for every latent scale
        lr = LogisticRegression(C=c, max_iter=2000).fit((z - mu) / sd, target)
        weight = np.full((k, z.shape[1]), 0.0)
        bias = np.full(k, -1e4)  # a class no face shows is never predicted
        coef, icpt = lr.coef_, lr.intercept_
        if present.size == 2:  # scikit-learn gives one row for two classes
            coef, icpt = np.stack([-coef[0] / 2, coef[0] / 2]), np.array([-icpt[0], icpt[0]]) / 2
        for row, cl in enumerate(lr.classes_):
            weight[cl] = coef[row] / sd
            bias[cl] = icpt[row] - float(coef[row] @ (mu / sd))
        return cls(tuple(members), weight.astype(np.float32), bias.astype(np.float32))

    def predict(self, z: Any) -> list[str | None]:
        """The member each row of ``z`` (N, D) shows, None for none of them."""
        z = as_array(z, "z", 2).astype(np.float32)
        if z.shape[1] != self.weight.shape[1]:
            raise VectorError(
                f"z has {z.shape[1]} dimensions, the classifier {self.weight.shape[1]}"
            )
        k = np.argmax(z @ self.weight.T + self.bias, axis=1)
        return [self.members[i] if i < len(self.members) else None for i in k]


def swap_vectors(
    z: Any, labels: Any, names: Sequence[str], members: Sequence[str], *, min_faces: int = 0
) -> dict[str, dict[str, np.ndarray]]:
    """``{A: {R: mean(z | A) - mean(z | R, not A)}}`` for every ordered pair of members with
    at least ``min_faces`` (and one) faces on each side."""
    z = as_array(z, "z", 2).astype(np.float64)
    y = as_array(labels, "labels", 2) > 0
    cols = {m: _resolve(m, list(names), "exclusive group") for m in members}
    out: dict[str, dict[str, np.ndarray]] = {}
    for a, ca in cols.items():
        pos = y[:, ca]
        if pos.sum() < max(min_faces, 1):
            continue
        for r, cr in cols.items():
            rival = y[:, cr] & ~pos
            if r == a or rival.sum() < max(min_faces, 1):
                continue
            step = z[pos].mean(0) - z[rival].mean(0)
            out.setdefault(a, {})[r] = step.astype(np.float32)
    return out

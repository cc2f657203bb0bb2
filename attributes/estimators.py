"""Concept vectors from (N, D) latents and (N, A) binary labels.

Four ways to turn "these latents have the attribute, those do not" into a direction:

- ``mean``: mean(z | label = 1) - mean(z | label = 0). Fast and exact, but it carries every
  attribute correlated with the target (in CelebA, "Wearing_Lipstick" points half-way to
  "not Male").
- ``balanced``: the same difference after reweighting both groups so the most correlated other
  attributes (the confounders) have the same distribution in each.
- ``classifier``: a cross-validated logistic regression. By default its activation pattern
  (Haufe et al. 2014: the latent covariance times the normal, ``Cov(z) w``): the normal points
  where the classes *separate*, which can be a direction the decoder barely draws, while the
  pattern points where the attribute *shows* in the latents. ``direction="normal"`` keeps the
  normal. Either is scaled so that adding it once moves the negatives' mean to the positives'
  mean along it.
- ``adjusted``: regression adjustment: the target's coefficient in the least-squares fit of the
  latents on *all* labels at once (``z ~ b + sum_k w_k y_k``), that is the change of z when the
  target flips with every other label held fixed. Where balancing evens out a few confounders,
  this holds all of them; the price is variance where labels are nearly collinear, which its
  effective counts show (the class counts times ``1 - R^2`` of the target on the other labels).
- ``conditional``: a ``base`` vector with the directions of chosen ``condition`` attributes
  projected out, so that editing the target leaves them alone.
- ``orthogonal``: a ``base`` vector made orthogonal to the logistic-regression normals of every
  other label the data lets vary freely with the target (|r| < ``FREE_CORRELATION`` and not
  implied: see :func:`implied_by`). A step orthogonal to a label's normal leaves that label's
  linear score unchanged (the conditional manipulation of InterFaceGAN, Shen et al. 2020, over
  all free labels at once), where projecting out mean differences does not unless the latents
  are isotropic. ``directions`` adds, per label, latent directions along which it also changes
  (a model's decoder knows them; the latents alone do not): the step is kept orthogonal to
  those of every free label too.

Everything works on numpy; torch tensors are accepted by duck typing and never imported.
"""

from __future__ import annotations

import difflib
import inspect
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from attributes._arrays import as_array, to_numpy
from attributes.errors import UnreliableVectorWarning, VectorError

METHODS = ("mean", "balanced", "classifier", "adjusted", "conditional", "orthogonal")
BASES = ("mean", "balanced", "classifier", "adjusted")
DIRECTIONS = ("pattern", "normal")  # what the classifier method returns
DEFAULT_CONFOUNDERS = 3
MIN_CORRELATION = 0.05  # confounders chosen by count must be at least this correlated (|r|)
_CHUNK_ELEMENTS = 2_000_000  # a float64 chunk holds at most this many latents (16 MB)
_CHUNK_ROWS = 8192
_JOBS_PER_PASS = 32  # balanced vectors computed per pass over the latents
FREE_CORRELATION = 0.3  # orthogonal: labels correlated with the target by less may not move ...
IMPLIED_SUPPORT = 0.05  # ... unless the target's value all but fixes theirs (P < this or > 1-this)
NORMAL_SAMPLES = 8000  # latents per logistic normal of the orthogonal method


# ----------------------------------------------------------------------------- input checks


def _as_names(names: Any, what: str) -> list[str]:
    if names is None:
        return []
    names = [names] if isinstance(names, str) else list(names)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise VectorError(
            f"{what} must be strings, got {bad[0]!r} ({type(bad[0]).__name__}); "
            "pass attribute names"
        )
    return names


def _check_names(names: Any) -> list[str]:
    names = _as_names(names, "names")
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        key = n.casefold()
        if key in seen:
            raise VectorError(
                f"names has a duplicate: {names[seen[key]]!r} at {seen[key]} and {n!r} at {i}; "
                "attribute names must be unique (case-insensitively)"
            )
        seen[key] = i
    return names


def _resolve(name: str, names: Sequence[str], what: str) -> int:
    """Index of ``name`` in ``names``: exact match first, then a case-insensitive one."""
    if name in names:
        return list(names).index(name)
    folded = [n.casefold() for n in names]
    if name.casefold() in folded:
        return folded.index(name.casefold())
    close = difflib.get_close_matches(name.casefold(), folded, n=3, cutoff=0.6)
    if close:
        hint = "did you mean " + " or ".join(repr(names[folded.index(c)]) for c in close) + "?"
    else:
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        hint = f"known names ({len(names)}): {shown}"
    raise VectorError(f"unknown attribute {name!r} in {what}; {hint}")


def _check_latents(latents: Any) -> np.ndarray:
    z = as_array(latents, "latents", 2)
    if z.dtype == bool:
        z = z.astype(np.float32)
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise VectorError(
            f"latents must be real numbers, got dtype {z.dtype}; pass a float array of shape (N, D)"
        )
    if z.shape[0] == 0 or z.shape[1] == 0:
        raise VectorError(f"latents is empty (shape {z.shape}); pass at least one row and column")
    if np.issubdtype(z.dtype, np.floating):
        bad = [
            rows.start + np.flatnonzero(~np.isfinite(z[rows]).all(axis=1))
            for rows in _chunks(*z.shape)
            if not np.isfinite(z[rows]).all()
        ]
        if bad:
            flagged = np.concatenate(bad)
            raise VectorError(
                f"latents has NaN or infinite values in {flagged.size} of {z.shape[0]} rows "
                f"(first bad row: {flagged[0]}); drop those rows or fix the encoder output"
            )
    return z


def _check_labels(labels: Any, n_rows: int, names: list[str]) -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim == 1:
        if len(names) != 1:
            raise VectorError(
                f"labels is 1-D but names has {len(names)} entries; pass labels of shape "
                f"(N, {len(names)}), or 1-D labels with exactly one name"
            )
        y = y.reshape(-1, 1)
    if y.ndim != 2:
        raise VectorError(
            f"labels must be 2-D (N, A), got shape {tuple(y.shape)} ({y.ndim}-D); "
            "pass one 0/1 column per attribute"
        )
    if y.shape[0] != n_rows:
        raise VectorError(
            f"labels has {y.shape[0]} rows but latents has {n_rows}; "
            "pass one label row per latent row, in the same order"
        )
    if y.shape[1] != len(names):
        raise VectorError(
            f"labels has {y.shape[1]} columns but names has {len(names)} entries; "
            "pass one name per label column"
        )
    if y.dtype == bool:
        return y.view(np.uint8)
    if not (np.issubdtype(y.dtype, np.number)):
        raise VectorError(f"labels must be 0/1 numbers or booleans, got dtype {y.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        found = np.unique(np.concatenate([np.unique(y[bad]), np.unique(y[~bad])]))
        shown = ", ".join(f"{v:g}" for v in found[:10]) + (", ..." if found.size > 10 else "")
        hint = " (CelebA's -1/1: pass labels > 0)" if found.min() == -1 else ""
        raise VectorError(
            f"labels must be 0/1, found values {{{shown}}} in {int(bad.sum())} entries; "
            f"map them to 0/1{hint}"
        )
    return y.astype(np.uint8, copy=False)


def _check_both_classes(names: list[str], counts: np.ndarray, what: str = "attribute") -> None:
    for name, (neg, pos) in zip(names, counts):
        if neg == 0 or pos == 0:
            raise VectorError(
                f"{what} {name!r} has {pos} positives and {neg} negatives; a vector needs both "
                f"classes: drop it via attributes=[...] (or condition=/confounders=)"
            )


def _warn_small(names: list[str], counts: np.ndarray, min_count: int, what: str) -> None:
    for name, (neg, pos) in zip(names, counts):
        if min(neg, pos) < min_count:
            warnings.warn(
                f"{what} {name!r} has {pos} positives and {neg} negatives (fewer than "
                f"min_count={min_count} in a class): its vector is unreliable; label more "
                "examples or drop it via attributes=[...]",
                UnreliableVectorWarning,
                stacklevel=3,
            )


# ----------------------------------------------------------------------------- the math


def _chunks(n_rows: int, n_cols: int):
    # Chunking bounds the float64 copies, and OpenBLAS is up to 100x slower on one product
    # with a very long inner dimension (200,000 rows) than on a few shorter ones.
    step = min(_CHUNK_ROWS, max(1, _CHUNK_ELEMENTS // max(1, n_cols)))
    for start in range(0, n_rows, step):
        yield slice(start, min(n_rows, start + step))


def _weighted_sums(z: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``s.T @ z`` in float64 for (N, K) weights ``s`` and (N, D) latents ``z``: (K, D)."""
    out = np.zeros((z.shape[1], s.shape[1]), dtype=np.float64)
    for rows in _chunks(*z.shape):
        # (D, n) @ (n, K) runs faster in BLAS than (K, n) @ (n, D) for few, long columns.
        out += z[rows].astype(np.float64).T @ s[rows].astype(np.float64, copy=False)
    return out.T


def _mean_difference(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Checked (N, D) latents and (N, A) 0/1 uint8 labels -> (A, D) float64, (A, 2) int64."""
    # One matrix product against [labels, 1] gives every positive sum and the grand total.
    sums = np.zeros((z.shape[1], y.shape[1] + 1), dtype=np.float64)
    for rows in _chunks(*z.shape):
        s = np.empty((rows.stop - rows.start, y.shape[1] + 1), dtype=np.float64)
        s[:, :-1] = y[rows]
        s[:, -1] = 1.0
        sums += z[rows].astype(np.float64).T @ s
    sums = sums.T
    pos = y.sum(axis=0, dtype=np.int64)
    neg = y.shape[0] - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_pos = sums[:-1] / pos[:, None]
        mean_neg = (sums[-1] - sums[:-1]) / neg[:, None]
    return mean_pos - mean_neg, np.stack([neg, pos], axis=1)


def mean_difference(
    latents: Any, labels: Any, *, names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean of positives minus mean of negatives, for every label column at once.

    ``latents`` (N, D) and ``labels`` (N, A) of 0/1 (or bool; 1-D for a single attribute), numpy
    or torch. Returns ``vectors`` (A, D) float64 and ``counts`` (A, 2) int64 as
    ``[negatives, positives]``. ``names`` only serves error messages (default ``"column i"``).
    Accumulates in float64 with one matrix product; a column lacking a class is a
    :class:`VectorError`.
    """
    z = _check_latents(latents)
    if names is None:
        n_cols = 1 if to_numpy(labels).ndim == 1 else to_numpy(labels).shape[-1]
        names = [f"column {i}" for i in range(n_cols)]
    names = _check_names(names)
    y = _check_labels(labels, z.shape[0], names)
    vectors, counts = _mean_difference(z, y)
    _check_both_classes(names, counts, "label")
    return vectors, counts


def project_out(vector: Any, others: Any) -> np.ndarray:
    """The component of ``vector`` (D,) orthogonal to the span of ``others`` (K, D) or (D,).

    Uses least squares, so ``others`` may be collinear or rank-deficient: only their span counts.
    Returns float64 (D,) (float32 if ``vector`` is float32).
    """
    v = as_array(vector, "vector", 1)
    o = to_numpy(others)
    if o.ndim == 1:
        o = o[None, :]
    o = as_array(o, "others", 2)
    if o.shape[1] != v.shape[0]:
        raise VectorError(
            f"others has {o.shape[1]} columns but vector has {v.shape[0]} entries; "
            "pass others as (K, D) with the vector's D"
        )
    v64 = v.astype(np.float64)
    if o.shape[0] == 0:
        out = v64
    else:
        basis = o.astype(np.float64).T  # (D, K)
        coef = np.linalg.lstsq(basis, v64, rcond=None)[0]
        out = v64 - basis @ coef
    return out.astype(np.float32) if v.dtype == np.float32 else out


def _correlations(y: np.ndarray) -> np.ndarray:
    """(A, A) Pearson correlations of 0/1 label columns; 0 where a column is constant."""
    n = y.shape[0]
    mean = y.sum(axis=0, dtype=np.float64) / n
    # One BLAS thread: for an (A, A) result threads only add overhead, and on a busy machine
    # OpenBLAS's spinning threads made this product take seconds instead of milliseconds.
    with threadpool_limits(limits=1, user_api="blas"):
        cov = _weighted_sums(y, y) / n - np.outer(mean, mean)
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = cov / np.outer(sd, sd)
    r[~np.isfinite(r)] = 0.0
    return r


def implied_by(
    y: np.ndarray,
    target: int,
    others: Sequence[int],
    support: float = IMPLIED_SUPPORT,
    state: int | None = None,
) -> dict[int, tuple[float, float]]:
    """The ``others`` (column indices of 0/1 labels ``y``) whose value the target's value all but
    fixes: index -> (P(other | target = 0), P(other | target = 1)) where either (only the one
    of ``state`` when given) is below ``support`` or above ``1 - support``. Phi correlation
    misses these when one label is rare (stubble and Male can correlate by r < 0.3 although
    every face with stubble is male)."""
    t = y[:, target].astype(bool)
    states = (0, 1) if state is None else (int(state),)
    out = {}
    for o in others:
        col = y[:, o].astype(bool)
        ps = tuple(float(col[t == s].mean()) if (t == s).any() else 0.5 for s in (False, True))
        if any(ps[s] < support or ps[s] > 1.0 - support for s in states):
            out[o] = ps
    return out


def _logistic_normal(z: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The unit normal (D,) in raw latent units of a logistic regression (C = 1, balanced
    classes) of 0/1 ``y`` on ``z``, fitted on at most ``NORMAL_SAMPLES`` rows."""
    from sklearn.linear_model import LogisticRegression

    rows = np.arange(y.shape[0])
    if rows.size > NORMAL_SAMPLES:
        rows = np.sort(rng.choice(rows, size=NORMAL_SAMPLES, replace=False))
    x = z[rows].astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0
    ys = y[rows]
    if ys.min() == ys.max():
        return np.zeros(z.shape[1])
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=500)
    w = model.fit((x - mean) / std, ys).coef_[0] / std
    norm = float(np.linalg.norm(w))
    return w / norm if norm > 0 and np.isfinite(norm) else np.zeros(z.shape[1])


def _adjusted(z: np.ndarray, y: np.ndarray, targets: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Regression adjustment: the coefficients of ``targets`` (A', D) in the least-squares fit
    of ``z`` on an intercept and every label with both classes, and per target the share of its
    variance the other labels leave unexplained (``1 - R^2``, in [0, 1]).

    Solved through the labels' (A x A) covariance, accumulated over row chunks, so memory does
    not grow with N; a label that other labels determine exactly gets the minimum-norm share of
    the joint effect (pseudo-inverse) and a ``1 - R^2`` of 0.
    """
    n = y.shape[0]
    pos = y.sum(axis=0, dtype=np.int64)
    usable = [k for k in range(y.shape[1]) if 0 < pos[k] < n]
    yc = y[:, usable].astype(np.float64)
    yc -= yc.mean(axis=0)
    cyy = yc.T @ yc
    # centred labels sum to zero, so their products with z need no centred z: one pass
    cyz = np.zeros((len(usable), z.shape[1]), dtype=np.float64)
    for rows in _chunks(n, z.shape[1]):
        cyz += yc[rows].T @ z[rows].astype(np.float64)
    coef = np.linalg.pinv(cyy, rcond=1e-10, hermitian=True) @ cyz
    picked = [usable.index(t) for t in targets]
    share = np.empty(len(targets), dtype=np.float64)
    for k, j in enumerate(picked):  # 1 - R^2 of the target's label on all the others
        o = [i for i in range(len(usable)) if i != j]
        explained = cyy[j, o] @ np.linalg.pinv(cyy[np.ix_(o, o)], rcond=1e-10, hermitian=True)
        share[k] = (cyy[j, j] - explained @ cyy[o, j]) / cyy[j, j] if o else 1.0
    share = np.clip(share, 0.0, 1.0)
    return coef[picked], share


def _pick_confounders(
    target: int, conf_names: list[int] | None, k: int, r: np.ndarray | None
) -> list[int]:
    """The given confounders minus the target, or the k labels most correlated with it."""
    if conf_names is not None:
        return [c for c in conf_names if c != target]
    strength = np.abs(r[target])
    strength[target] = -1.0
    order = np.argsort(-strength, kind="stable")
    return [int(i) for i in order[:k] if strength[i] >= MIN_CORRELATION]


def _balance_weights(y: np.ndarray, target: int, confs: list[int]) -> tuple[np.ndarray, float]:
    """Signed weights (N,) whose dot with the latents is the balanced mean difference.

    Samples are grouped by the joint value of the confounders. Cells lacking either class are
    dropped; in the others each class gets weights making its cell distribution equal to the
    pooled distribution of the kept cells, and summing to 1. Returns weights and coverage.
    """
    pos = y[:, target].astype(bool)
    if confs:
        code = y[:, confs].astype(np.int64) @ (np.int64(1) << np.arange(len(confs), dtype=np.int64))
        _, cell = np.unique(code, return_inverse=True)
        cell = cell.reshape(-1)
    else:
        cell = np.zeros(y.shape[0], dtype=np.int64)
    n_cells = int(cell.max()) + 1
    total = np.bincount(cell, minlength=n_cells).astype(np.float64)
    n_pos = np.bincount(cell, weights=pos, minlength=n_cells)
    n_neg = total - n_pos
    kept = (n_pos > 0) & (n_neg > 0)
    covered = total[kept].sum()
    if covered == 0:
        return np.zeros(y.shape[0]), 0.0
    share = np.where(kept, total / covered, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_pos = np.where(kept, share / n_pos, 0.0)
        w_neg = np.where(kept, share / n_neg, 0.0)
    weights = np.where(pos, w_pos[cell], -w_neg[cell])
    return weights, float(covered / y.shape[0])


def _covariance_times(z: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``Cov(z) @ w`` (D,) in float64 over all rows of the raw (N, D) latents, without forming
    the (D, D) covariance: the covariance of every latent with the score ``z @ w``."""
    n = z.shape[0]
    mean = np.zeros(z.shape[1])
    for rows in _chunks(*z.shape):
        mean += z[rows].astype(np.float64).sum(axis=0)
    mean /= n
    score = np.empty(n)
    for rows in _chunks(*z.shape):
        score[rows] = (z[rows].astype(np.float64) - mean) @ w
    out = np.zeros(z.shape[1])
    for rows in _chunks(*z.shape):
        out += (z[rows].astype(np.float64) - mean).T @ score[rows]
    return out / n


def _kish(weights: np.ndarray) -> float:
    """Kish's effective sample size of the positive entries of ``weights``: (sum w)^2 / sum w^2.

    Equal weights give their count; a few heavy weights give about that few.
    """
    w = weights[weights > 0]
    return float(w.sum() ** 2 / (w * w).sum()) if w.size else 0.0


# ----------------------------------------------------------------------------- the estimator


class AttributeVectors:
    """Fit one concept vector per binary attribute from (N, D) latents and (N, A) labels.

    Parameters follow scikit-learn: ``__init__`` stores them, :meth:`fit` checks them.

    - ``method``: ``"mean"``, ``"balanced"``, ``"classifier"``, ``"adjusted"``,
      ``"conditional"`` or ``"orthogonal"``.
    - ``attributes``: names to fit (default all; for ``conditional``, all but the conditions).
    - ``confounders``: for ``balanced`` (and the condition vectors of ``conditional``), the
      attributes to balance: a list of names, or a number k of the other attributes most
      correlated with the target (only those with |r| >= 0.05; default 3).
    - ``condition``: for ``conditional``, the attribute (a name) or attributes (a list) whose
      directions are projected out; with several, the target loses its component along the span
      of all their directions at once (least squares), not one after the other.
      Their directions are ``balanced`` vectors whose confounders always include the target, so
      the target does not leak into them. A requested target that is itself a condition keeps
      its ``base`` vector unchanged; asking only for condition attributes is an error.
    - ``base``: the method giving the target vector of ``conditional`` and ``orthogonal``.
    - ``directions``: for ``orthogonal``, a mapping label name -> (D,) or (K, D) latent
      directions along which that label also shows (for example its pixel change pulled back
      through a decoder, which is what ``conceptvae``'s ``steered`` method passes). A target's
      step is made orthogonal to these, for each label it keeps free, as well as to the label's
      normal. Labels missing from the mapping keep their normal only.
    - ``min_count``: fewer examples than this in a class warns with
      :class:`UnreliableVectorWarning`.
    - ``cv``, ``Cs``, ``max_samples``, ``random_state``: the ``classifier`` method's
      cross-validation folds, inverse regularisation strengths, row subsample and seed. The
      logistic regression is fitted on standardised latents; its normal is mapped back to raw
      latent units (divided by each latent's standard deviation) before anything else.
    - ``direction``: what the ``classifier`` method returns. ``"pattern"`` (default): the
      activation pattern ``Cov(z) w`` (Haufe et al. 2014), where the attribute shows in the
      latents, so edits along it change faces the way the mean difference does. ``"normal"``:
      the logistic regression's normal ``w``, where the classes separate best; it can point
      along directions the decoder barely draws (edits then hardly change the face). Either is
      scaled like the mean difference: its projection on its own unit direction equals the mean
      difference's, so strength 1 moves the negatives' mean to the positives' mean along it.

    Fitted attributes: ``vectors_`` (A', D) float32, ``names_`` (A' names, in the order of
    ``names``), ``counts_`` (A', 2) int64 ``[negatives, positives]`` that made each vector (for
    ``balanced``, those in cells holding both classes), ``effective_counts_`` (A', 2) float64
    ``[negatives, positives]``: how many faces each class of a vector effectively rests on
    (Kish's ``(sum w)^2 / sum w^2`` under the balancing weights for ``balanced``; the class counts
    for ``mean``; the rows the classifier was fitted on, after ``max_samples``, for
    ``classifier``; the class counts times ``1 - R^2`` of the target on the other labels for
    ``adjusted``; the ``base`` vector's for ``conditional``), ``norms_`` (A',) float32,
    ``confounders_`` and ``coverage_`` (per balanced target: the attributes balanced, the share of
    samples in cells holding both classes), ``condition_`` (the condition names as resolved
    against ``names``, empty unless ``conditional``), ``condition_confounders_``
    (``conditional`` only: target -> condition -> the confounders its direction was balanced on),
    ``preserved_`` (``orthogonal`` only: target -> the labels whose normals it is orthogonal to).
    """

    def __init__(
        self,
        method: str = "mean",
        *,
        attributes: Sequence[str] | None = None,
        confounders: Sequence[str] | int | None = None,
        condition: str | Sequence[str] = (),
        base: str = "mean",
        min_count: int = 10,
        cv: int = 3,
        Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0, 10.0),
        max_samples: int | None = 20000,
        random_state: int = 0,
        direction: str = "pattern",
        directions: dict[str, Any] | None = None,
    ) -> None:
        self.method = method
        self.attributes = attributes
        self.confounders = confounders
        self.condition = condition
        self.base = base
        self.min_count = min_count
        self.cv = cv
        self.Cs = Cs
        self.max_samples = max_samples
        self.random_state = random_state
        self.direction = direction
        self.directions = directions

    # -- parameters

    def _check_params(self) -> None:
        for param, allowed in (("method", METHODS), ("base", BASES), ("direction", DIRECTIONS)):
            value = getattr(self, param)
            if value not in allowed:
                close = difflib.get_close_matches(str(value), allowed, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise VectorError(
                    f"unknown {param} {value!r}; {hint}choose one of {', '.join(allowed)}"
                )
        if self.method != "conditional" and len(_as_names(self.condition, "condition")):
            raise VectorError(
                f"condition is only used by method='conditional', got method={self.method!r}; "
                "pass method='conditional' or drop condition"
            )
        if self.method == "conditional" and not len(_as_names(self.condition, "condition")):
            raise VectorError(
                "method='conditional' needs condition=[...]: the attributes to keep unchanged"
            )
        uses_classifier = self.method == "classifier" or (
            self.method in ("conditional", "orthogonal") and self.base == "classifier"
        )
        if self.direction != "pattern" and not uses_classifier:
            raise VectorError(
                f"direction={self.direction!r} is only used by the classifier, got "
                f"method={self.method!r}; pass method='classifier' (or base='classifier' with "
                "'conditional'), or drop direction"
            )
        for param, low in (("min_count", 1), ("cv", 2)):
            value = getattr(self, param)
            if not isinstance(value, numbers.Integral) or value < low:
                raise VectorError(f"{param} must be an integer >= {low}, got {value!r}")
        if self.max_samples is not None and (
            not isinstance(self.max_samples, numbers.Integral) or self.max_samples < 2 * self.cv
        ):
            raise VectorError(
                f"max_samples must be None or an integer >= 2*cv={2 * self.cv}, "
                f"got {self.max_samples!r}"
            )
        cs = np.asarray(self.Cs, dtype=np.float64).reshape(-1)
        if cs.size == 0 or not np.all(np.isfinite(cs) & (cs > 0)):
            raise VectorError(f"Cs must be positive numbers, got {self.Cs!r}")
        if self.directions is not None and self.method != "orthogonal":
            raise VectorError(
                f"directions is only used by method='orthogonal', got method={self.method!r}; "
                "pass method='orthogonal' or drop directions"
            )
        if self.directions is not None and not isinstance(self.directions, dict):
            raise VectorError(
                f"directions must be a dict of label name -> (D,) or (K, D) arrays, got "
                f"{type(self.directions).__name__}"
            )
        if isinstance(self.confounders, bool) or (
            isinstance(self.confounders, numbers.Integral) and self.confounders < 0
        ):
            raise VectorError(
                f"confounders must be None, an integer >= 0 or a list of names, "
                f"got {self.confounders!r}"
            )

    # -- fitting

    def fit(self, latents: Any, labels: Any, names: Sequence[str]) -> AttributeVectors:
        """Fit from ``latents`` (N, D) and 0/1 ``labels`` (N, A) whose columns are ``names``.

        Numpy or torch inputs; 1-D labels are accepted with a single name. Returns ``self``.
        """
        self._check_params()
        z = _check_latents(latents)
        names = _check_names(names)
        y = _check_labels(labels, z.shape[0], names)

        cond_names = _as_names(self.condition, "condition")
        conditions = list(dict.fromkeys(_resolve(c, names, "condition") for c in cond_names))
        if self.attributes is None:
            targets = [i for i in range(len(names)) if i not in conditions]
        else:
            requested = _as_names(self.attributes, "attributes")
            targets = [_resolve(a, names, "attributes") for a in requested]
            twice = [t for t in targets if targets.count(t) > 1]
            if twice:
                spelled = [a for a, t in zip(requested, targets) if t == twice[0]]
                raise VectorError(
                    f"attributes lists {names[twice[0]]!r} {len(spelled)} times (as "
                    f"{', '.join(map(repr, spelled))}); list each attribute once"
                )
        if not targets or (conditions and all(t in conditions for t in targets)):
            raise VectorError(
                "no attribute to fit: every requested attribute is a condition, and an attribute "
                "cannot be conditioned on itself; request other attributes or drop the condition"
            )
        if isinstance(self.confounders, numbers.Integral) or self.confounders is None:
            conf_names = None
            k = DEFAULT_CONFOUNDERS if self.confounders is None else int(self.confounders)
        else:
            given = _as_names(self.confounders, "confounders")
            conf_names = list(dict.fromkeys(_resolve(c, names, "confounders") for c in given))
            k = len(conf_names)
        needs_r = self.method == "orthogonal" or (
            conf_names is None and self.method in ("balanced", "conditional")
        )
        r = _correlations(y) if needs_r else None

        def pick(target: int) -> list[int]:
            return _pick_confounders(target, conf_names, k, r)

        pos = y.sum(axis=0, dtype=np.int64)
        all_counts = np.stack([y.shape[0] - pos, pos], axis=1)
        _check_both_classes([names[i] for i in targets], all_counts[targets])
        _check_both_classes([names[i] for i in conditions], all_counts[conditions], "condition")

        self.confounders_: dict[str, list[str]] = {}
        self.coverage_: dict[str, float] = {}
        self.condition_confounders_: dict[str, dict[str, list[str]]] = {}
        base = self.base if self.method in ("conditional", "orthogonal") else self.method
        vectors, counts, effective = self._fit_base(base, z, y, names, targets, pick)

        if self.method == "conditional":
            free = [k for k, t in enumerate(targets) if t not in conditions]
            cond_vectors = self._condition_vectors(
                z, y, names, [targets[k] for k in free], conditions, pick
            )
            for k in free:
                vectors[k] = project_out(vectors[k], cond_vectors[targets[k]])
        self.preserved_: dict[str, list[str]] = {}
        if self.method == "orthogonal":
            extra = self._check_directions(names, z.shape[1])
            vectors = self._orthogonal(z, y, names, targets, vectors, r, all_counts, extra)

        _warn_small([names[i] for i in targets], counts, self.min_count, "attribute")
        self.names_ = [names[i] for i in targets]
        self.vectors_ = vectors.astype(np.float32)
        self.counts_ = counts.astype(np.int64)
        self.effective_counts_ = effective.astype(np.float64)
        self.norms_ = np.linalg.norm(vectors, axis=1).astype(np.float32)
        self.condition_ = [names[c] for c in conditions]
        return self

    def _orthogonal(
        self,
        z: np.ndarray,
        y: np.ndarray,
        names: list[str],
        targets: list[int],
        vectors: np.ndarray,
        r: np.ndarray,
        counts: np.ndarray,
        extra: dict[int, np.ndarray],
    ) -> np.ndarray:
        """Each target's vector orthogonal to the normals of the labels free to stay fixed (and
        to their ``extra`` directions)."""
        rng = np.random.default_rng(self.random_state)
        usable = [o for o in range(len(names)) if counts[o].min() >= self.min_count]
        normals: dict[int, np.ndarray] = {}
        out = vectors.copy()
        for k, t in enumerate(targets):
            loose = [o for o in usable if o != t and abs(r[t, o]) < FREE_CORRELATION]
            fixed = implied_by(y, t, loose)
            keep = [o for o in loose if o not in fixed]
            for o in keep:
                if o not in normals:
                    normals[o] = _logistic_normal(z, y[:, o], rng)
            basis = [normals[o] for o in keep if np.any(normals[o])]
            basis += [row for o in keep if o in extra for row in extra[o] if np.any(row)]
            if basis:
                out[k] = project_out(vectors[k], np.stack(basis))
            self.preserved_[names[t]] = [names[o] for o in keep]
        return out

    def _check_directions(self, names: list[str], dim: int) -> dict[int, np.ndarray]:
        """``directions`` as label index -> (K, D) float64, checked against the names and D."""
        out: dict[int, np.ndarray] = {}
        for name, value in (self.directions or {}).items():
            o = _resolve(name, names, "directions")
            d = np.asarray(to_numpy(value), dtype=np.float64)
            if d.ndim == 1:
                d = d[None, :]
            if d.ndim != 2 or d.shape[1] != dim:
                raise VectorError(
                    f"directions[{name!r}] has shape {tuple(np.shape(value))}, but the latents "
                    f"have D={dim}: pass (D,) or (K, D)"
                )
            if not np.all(np.isfinite(d)):
                raise VectorError(f"directions[{name!r}] holds NaN or inf; recompute it")
            out[o] = d
        return out

    def _balanced(
        self,
        z: np.ndarray,
        y: np.ndarray,
        names: list[str],
        jobs: list[tuple[int, list[int]]],
        what: str,
    ) -> tuple[np.ndarray, np.ndarray, list[float]]:
        """Balanced vectors for (target, confounder indices) pairs: (J, D), (J, 2) counts, (J, 2)
        effective counts (Kish, per class, under the balancing weights) and coverages."""
        if any(len(confs) > 62 for _, confs in jobs):
            raise VectorError("at most 62 confounders per attribute can be balanced; pass fewer")
        vectors = np.empty((len(jobs), z.shape[1]), dtype=np.float64)
        counts = np.zeros((len(jobs), 2), dtype=np.int64)
        effective = np.zeros((len(jobs), 2), dtype=np.float64)
        coverage = []
        for start in range(0, len(jobs), _JOBS_PER_PASS):  # bounds the (N, J) weight matrix
            batch = jobs[start : start + _JOBS_PER_PASS]
            weights = np.empty((y.shape[0], len(batch)), dtype=np.float64)
            for j, (t, confs) in enumerate(batch):
                weights[:, j], cov = _balance_weights(y, t, confs)
                if cov == 0.0:
                    raise VectorError(
                        f"cannot balance {what} {names[t]!r} on {[names[c] for c in confs]}: no "
                        "combination of those attributes holds both classes; "
                        "pass fewer confounders"
                    )
                counts[start + j] = [(weights[:, j] < 0).sum(), (weights[:, j] > 0).sum()]
                effective[start + j] = [_kish(-weights[:, j]), _kish(weights[:, j])]
                coverage.append(cov)
            vectors[start : start + len(batch)] = _weighted_sums(z, weights)
        return vectors, counts, effective, coverage

    def _fit_base(
        self,
        method: str,
        z: np.ndarray,
        y: np.ndarray,
        names: list[str],
        targets: list[int],
        pick: Callable[[int], list[int]],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Vectors (A', D), counts (A', 2) and effective counts (A', 2) of ``method``."""
        if method == "balanced":
            jobs = [(t, pick(t)) for t in targets]
            vectors, counts, effective, coverage = self._balanced(z, y, names, jobs, "attribute")
            for (t, confs), cov in zip(jobs, coverage):
                self.confounders_[names[t]] = [names[c] for c in confs]
                self.coverage_[names[t]] = cov
            return vectors, counts, effective
        if method == "adjusted":  # the class counts, shrunk by what the other labels explain
            vectors, share = _adjusted(z, y, targets)
            pos = y[:, targets].sum(axis=0, dtype=np.int64)
            counts = np.stack([y.shape[0] - pos, pos], axis=1)
            return vectors, counts, counts * share[:, None]
        vectors, counts = _mean_difference(z, y[:, targets])
        effective = counts.astype(np.float64)  # equal weights: every face counts once
        if method == "classifier":
            rng = np.random.default_rng(self.random_state)
            for k, t in enumerate(targets):
                vectors[k], effective[k] = self._classifier_vector(
                    z, y[:, t], vectors[k], names[t], rng
                )
        return vectors, counts, effective

    def _condition_vectors(
        self,
        z: np.ndarray,
        y: np.ndarray,
        names: list[str],
        targets: list[int],
        conditions: list[int],
        pick: Callable[[int], list[int]],
    ) -> dict[int, np.ndarray]:
        """Per target, the (C, D) balanced directions of the conditions, balanced on the target."""
        jobs: dict[tuple[int, tuple[int, ...]], int] = {}
        plan: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
        for t in targets:
            plan[t] = []
            self.condition_confounders_[names[t]] = {}
            for c in conditions:
                confs = pick(c)
                if t not in confs:
                    confs = confs + [t]
                key = (c, tuple(confs))
                jobs.setdefault(key, len(jobs))
                plan[t].append(key)
                self.condition_confounders_[names[t]][names[c]] = [names[i] for i in confs]
        keys = list(jobs)
        vectors, counts, _, _ = self._balanced(
            z, y, names, [(c, list(confs)) for c, confs in keys], "condition"
        )
        seen: set[int] = set()
        for (c, _), count in zip(keys, counts):
            if c not in seen:
                _warn_small([names[c]], count[None], self.min_count, "condition")
                seen.add(c)
        return {t: vectors[[jobs[key] for key in plan[t]]] for t in targets}

    def _classifier_vector(
        self,
        z: np.ndarray,
        y: np.ndarray,
        difference: np.ndarray,
        name: str,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The classifier vector (D,) of one attribute, in raw latent units, scaled like
        ``difference``; and the ``[negatives, positives]`` the classifier was fitted on."""
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import StratifiedKFold

        rows = np.arange(y.shape[0])
        if self.max_samples is not None and y.shape[0] > self.max_samples:
            # Stratified: each class keeps its share, but at least cv examples (or all it has).
            picked = []
            for cls in (0, 1):
                members = rows[y == cls]
                want = round(self.max_samples * members.size / y.shape[0])
                want = min(members.size, max(want, self.cv))
                picked.append(rng.choice(members, size=want, replace=False))
            rows = np.sort(np.concatenate(picked))
        ys = y[rows]
        smallest = int(min((ys == 0).sum(), (ys == 1).sum()))
        if smallest < self.cv:
            raise VectorError(
                f"attribute {name!r} has only {smallest} examples in a class, fewer than "
                f"cv={self.cv} folds; use method='mean' or 'balanced', or lower cv"
            )
        x = z[rows].astype(np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std[std == 0] = 1.0  # a constant latent carries no signal; its weight stays ~0
        x = (x - mean) / std
        kwargs: dict[str, Any] = dict(
            Cs=list(np.asarray(self.Cs, dtype=np.float64).reshape(-1)),
            cv=StratifiedKFold(self.cv, shuffle=True, random_state=self.random_state),
            class_weight="balanced",
            scoring="neg_log_loss",
            max_iter=1000,
        )
        if "use_legacy_attributes" in inspect.signature(LogisticRegressionCV).parameters:
            kwargs.update(l1_ratios=(0.0,), use_legacy_attributes=False)  # sklearn >= 1.8
        model = LogisticRegressionCV(**kwargs).fit(x, ys)
        # Back to raw latent units: w_std . (z - m) / s = (w_std / s) . z + const.
        w = model.coef_[0] / std
        if not np.any(w) or not np.all(np.isfinite(w)):
            raise VectorError(
                f"the classifier for {name!r} found no direction (zero weights); "
                "use method='mean' or 'balanced'"
            )
        direction = w if self.direction == "normal" else _covariance_times(z, w)
        norm = float(np.linalg.norm(direction))
        if norm == 0.0 or not np.isfinite(norm):
            raise VectorError(
                f"the classifier pattern for {name!r} is zero (the latents do not vary along "
                "its normal); use direction='normal' or method='mean'"
            )
        unit = direction / norm
        fitted_on = np.array([(ys == 0).sum(), (ys == 1).sum()], dtype=np.float64)
        return unit * float(difference @ unit), fitted_on

    # -- using the result

    def vector(self, name: str) -> np.ndarray:
        """The fitted (D,) vector of ``name`` (case-insensitive), as a float32 copy."""
        if not hasattr(self, "vectors_"):
            raise VectorError(
                "this AttributeVectors is not fitted yet; call fit(latents, labels, names) first"
            )
        return self.vectors_[_resolve(name, self.names_, "the fitted vectors")].copy()

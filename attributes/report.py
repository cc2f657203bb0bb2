"""Vector quality: held-out AUC, cosine similarities between vectors, and label confounds.

A good concept vector separates held-out latents with and without its attribute (AUC of the
projection near 1), and the labels it was fitted on tell which other attributes it may drag
along (confounds: label correlations, like Wearing_Lipstick with Male at -0.8).

Vectors that fail silently are listed as *problems*, each with what to do: a held-out AUC near
chance (the vector does nothing), a class that effectively rests on few faces (a balanced vector
whose weights pile onto a handful of faces), a balanced vector that covers little of the data,
and a norm near zero next to the others'. The thresholds are the ``MIN_*`` constants below.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from attributes._arrays import as_array, to_numpy
from attributes.bank import VectorBank, _atomic_write
from attributes.errors import VectorError
from attributes.estimators import (
    _check_labels,
    _check_latents,
    _check_names,
    _correlations,
    _resolve,
)

TOP_CONFOUNDS = 3
# Problems: a vector is flagged when ...
MIN_AUC = 0.6  # ... its held-out AUC is under this (near chance, or below it: reversed)
MIN_EFFECTIVE = 30  # ... a class effectively rests on fewer faces (Kish, under its weights)
MIN_COVERAGE = 0.5  # ... it was balanced on a smaller share of the faces
MIN_NORM_RATIO = 0.1  # ... its norm is under this fraction of the median norm of the vectors


def thresholds() -> dict[str, float]:
    """The thresholds that flag problems, by name (as in ``Report.to_dict()["thresholds"]``)."""
    return {
        "min_auc": MIN_AUC,
        "min_effective": MIN_EFFECTIVE,
        "min_coverage": MIN_COVERAGE,
        "min_norm_ratio": MIN_NORM_RATIO,
    }


@dataclass
class Report:
    """Quality of A concept vectors, in the order of ``names``.

    ``auc`` (A,): ROC AUC of the held-out latents projected onto each vector against its label
    (NaN with a note where the name is not a label or a class is empty); ``norms`` (A,);
    ``cosine`` (A, A) between the vectors; ``confounds``: per name, up to 3 ``(other label, r)``
    with the largest |Pearson r|; ``counts``: the ``[negatives, positives]`` each vector was
    fitted from, where the bank records them; ``eval_counts``: the same in the held-out labels;
    ``effective_counts``: per name, the ``[negatives, positives]`` each vector effectively rests
    on (Kish's effective sample size under the balancing weights; where known); ``coverage``:
    per balanced vector, the share of the faces it was balanced on; ``problems``: per flagged
    name, one line per problem saying what is wrong and what to do (computed from the other
    fields and the ``MIN_*`` thresholds when not given; names without problems are absent).
    """

    names: list[str]
    auc: np.ndarray
    norms: np.ndarray
    cosine: np.ndarray
    confounds: dict[str, list[tuple[str, float]]]
    counts: dict[str, list[int]] | None = None
    eval_counts: dict[str, list[int]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    effective_counts: dict[str, list[float]] = field(default_factory=dict)
    coverage: dict[str, float] = field(default_factory=dict)
    problems: dict[str, list[str]] = None  # type: ignore[assignment]  # filled in __post_init__

    def __post_init__(self) -> None:
        if self.problems is None:
            sizes = {**(self.counts or {}), **self.effective_counts}
            self.problems = _problems(self.names, self.auc, self.norms, sizes, self.coverage)

    @property
    def flagged(self) -> list[str]:
        """The names with at least one problem, in the order of ``names``."""
        return [n for n in self.names if self.problems.get(n)]

    def most_similar(self, name: str) -> tuple[str, float] | None:
        """The other vector with the largest |cosine| to ``name``, and that cosine."""
        i = self.names.index(name)
        row = np.abs(self.cosine[i].astype(np.float64))
        row[i] = -1.0
        row[~np.isfinite(row)] = -1.0
        if len(self.names) < 2 or row.max() < 0:
            return None
        j = int(row.argmax())
        return self.names[j], float(self.cosine[i, j])

    def to_text(self) -> str:
        """A fixed-width table: name, AUC, norm, held-out positives, most similar vector,
        top confounds; then the problems (with the thresholds) and the notes."""
        name_w = max(9, *(len(n) for n in self.names))
        sim_w = max(12, *(len(n) + 6 for n in self.names))
        head = (
            f"{'attribute':<{name_w}}  {'AUC':>5}  {'norm':>8}  {'pos':>6}  "
            f"{'most similar':<{sim_w}}  confounds (label r)"
        )
        lines = [head, "-" * len(head)]
        for i, name in enumerate(self.names):
            auc = "  n/a" if math.isnan(self.auc[i]) else f"{self.auc[i]:.3f}"
            pos = str(self.eval_counts[name][1]) if name in self.eval_counts else "-"
            sim = self.most_similar(name)
            sim_text = "-" if sim is None else f"{sim[0]} {sim[1]:+.2f}"
            conf = ", ".join(f"{o} {r:+.2f}" for o, r in self.confounds.get(name, [])) or "-"
            lines.append(
                f"{name:<{name_w}}  {auc:>5}  {self.norms[i]:>8.3g}  {pos:>6}  "
                f"{sim_text:<{sim_w}}  {conf}"
            )
        lines.append("")
        flagged = self.flagged
        lines.append(
            f"problems: {len(flagged)} of {len(self.names)} vectors flagged (held-out AUC < "
            f"{MIN_AUC:g}, a class effectively under {MIN_EFFECTIVE:g} faces, balanced on under "
            f"{MIN_COVERAGE:.0%} of faces, norm under {MIN_NORM_RATIO:g} x the median)"
        )
        for name in flagged:
            lines.extend(f"  {name}: {reason}" for reason in self.problems[name])
        if self.notes:
            lines.append("")
            lines.extend(f"note: {n}: {text}" for n, text in self.notes.items())
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: NaN becomes None, arrays become lists."""

        def num(x: float) -> float | None:
            return None if not math.isfinite(x) else float(x)

        return {
            "names": list(self.names),
            "auc": {n: num(a) for n, a in zip(self.names, self.auc)},
            "norms": {n: num(v) for n, v in zip(self.names, self.norms)},
            "cosine": [[num(c) for c in row] for row in self.cosine],
            "confounds": {n: [[o, float(r)] for o, r in c] for n, c in self.confounds.items()},
            "counts": None if self.counts is None else {n: list(c) for n, c in self.counts.items()},
            "eval_counts": {n: list(c) for n, c in self.eval_counts.items()},
            "effective_counts": {
                n: [num(float(v)) for v in c] for n, c in self.effective_counts.items()
            },
            "coverage": {n: num(float(c)) for n, c in self.coverage.items()},
            "problems": {n: list(self.problems[n]) for n in self.flagged},
            "thresholds": thresholds(),
            "notes": dict(self.notes),
        }

    def cosine_heatmap(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Draw ``cosine`` as a PNG heatmap with matplotlib (blue -1, white 0, red +1, grey
        where undefined; values printed when A <= 12) with row and column labels and a colour
        bar. Written atomically; returns the path."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise VectorError(f"the heatmap is a PNG: give a path ending in .png, not {path}")
        buf = io.BytesIO()
        _heatmap_figure(self.cosine, self.names, title).savefig(buf, format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, buf.getvalue())
        return path


def quality_report(
    vectors: Any,
    names: Sequence[str] | None,
    latents: Any,
    labels: Any,
    label_names: Sequence[str],
    *,
    train_labels: Any = None,
    effective_counts: Mapping[str, Sequence[float]] | None = None,
    coverage: Mapping[str, float] | None = None,
) -> Report:
    """Judge concept vectors on held-out data.

    ``vectors``: (A, D) array with ``names``, a :class:`VectorBank`, or a fitted
    ``AttributeVectors`` (for these two, ``names`` None for all of it, or a subset).
    ``latents`` (N, D) and ``labels`` (N, A_all) 0/1 with ``label_names`` are held out from
    fitting. Confounds use ``train_labels`` (M, A_all) when given, since those shaped the
    vectors, else ``labels``. Names match labels case-insensitively.

    The class sizes and coverage that flag problems come from the estimator's
    ``effective_counts_`` and ``coverage_``, or the bank's metadata ``"effective_counts"``
    (name -> ``[negatives, positives]``; else its ``"counts"``, which bound them from above) and
    ``"coverage"`` (name -> share), at the top level or per name under ``"vectors"``;
    ``effective_counts`` and ``coverage`` given here (same shapes, by name) win.
    """
    from sklearn.metrics import roc_auc_score  # here: scikit-learn takes ~1 s to import

    counts = None
    known_effective: dict[str, list[float]] = {}
    known_coverage: dict[str, float] = {}
    if isinstance(vectors, VectorBank):
        bank = vectors if names is None else vectors.subset(list(names))
        names, matrix = bank.names, bank.matrix.astype(np.float64)
        meta = bank.metadata
        saved = meta.get("counts")
        if isinstance(saved, dict):
            counts = {n: list(saved[n]) for n in names if saved.get(n) is not None}
        per_vector = meta.get("vectors") if isinstance(meta.get("vectors"), dict) else {}
        for key, known in (("effective_counts", known_effective), ("coverage", known_coverage)):
            for n, info in _by_name(per_vector, names).items():  # merged banks: per vector
                if isinstance(info, dict) and info.get(key) is not None:
                    known[n] = info[key]
            known.update(_by_name(meta.get(key), names))
    elif hasattr(vectors, "vectors_") and hasattr(vectors, "names_"):  # a fitted estimator
        fitted = list(vectors.names_)
        rows = (
            list(range(len(fitted)))
            if names is None
            else [_resolve(n, fitted, "names") for n in _check_names(names)]
        )
        names = [fitted[i] for i in rows]
        matrix = as_array(vectors.vectors_, "vectors_", 2)[rows].astype(np.float64)
        est_counts = getattr(vectors, "counts_", None)
        if est_counts is not None:
            counts = {fitted[i]: [int(c) for c in est_counts[i]] for i in rows}
        eff = getattr(vectors, "effective_counts_", None)
        if eff is not None:
            known_effective = {fitted[i]: [float(c) for c in eff[i]] for i in rows}
        known_coverage = _by_name(getattr(vectors, "coverage_", None), names)
    elif hasattr(vectors, "fit") and hasattr(vectors, "method"):
        raise VectorError(
            f"this {type(vectors).__name__} is not fitted yet; call fit(latents, labels, names) "
            "before judging it"
        )
    else:
        if names is None:
            raise VectorError("names is None: pass one name per row of vectors, or a VectorBank")
        names = _check_names(names)
        matrix = as_array(vectors, "vectors", 2).astype(np.float64)
        if matrix.shape[0] != len(names):
            raise VectorError(
                f"vectors has {matrix.shape[0]} rows but names has {len(names)} entries; "
                "pass one name per vector"
            )
        if not np.isfinite(matrix).all():
            raise VectorError("vectors has NaN or infinite values; refit them")
    z = _check_latents(latents)
    if z.shape[1] != matrix.shape[1]:
        raise VectorError(
            f"latents has {z.shape[1]} columns but the vectors have {matrix.shape[1]}; "
            "pass latents from the model the vectors were made for"
        )
    label_names = _check_names(label_names)
    y = _check_labels(labels, z.shape[0], label_names)
    if train_labels is not None:
        train = to_numpy(train_labels)
        y_conf = _check_labels(train, train.shape[0] if train.ndim else 0, label_names)
    else:
        y_conf = y
    column = {n.casefold(): j for j, n in enumerate(label_names)}

    scores = z.astype(np.float64) @ matrix.T  # (N, A)
    auc = np.full(len(names), np.nan)
    eval_counts: dict[str, list[int]] = {}
    notes: dict[str, str] = {}
    for i, name in enumerate(names):
        j = column.get(name.casefold())
        if j is None:
            notes[name] = "not among the labels: no AUC or confounds"
            continue
        pos = int(y[:, j].sum())
        eval_counts[name] = [z.shape[0] - pos, pos]
        if pos == 0 or pos == z.shape[0]:
            empty = "positives" if pos == 0 else "negatives"
            notes[name] = f"no held-out {empty}: AUC undefined; hold out more data"
            continue
        auc[i] = roc_auc_score(y[:, j], scores[:, i])

    norms = np.linalg.norm(matrix, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = matrix / norms[:, None]  # zero vectors give NaN rows: their cosine is undefined
    cosine = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(cosine, np.where(norms > 0, 1.0, np.nan))
    for name, n in zip(names, norms):
        if n == 0:
            notes[name] = "; ".join(filter(None, [notes.get(name), "zero vector: no cosine"]))

    r = _correlations(y_conf)  # (A_all, A_all), 0 for constant columns
    confounds: dict[str, list[tuple[str, float]]] = {}
    for name in names:
        j = column.get(name.casefold())
        if j is None:
            continue
        order = [k for k in np.argsort(-np.abs(r[j]), kind="stable") if k != j and r[j, k] != 0]
        confounds[name] = [(label_names[k], float(r[j, k])) for k in order[:TOP_CONFOUNDS]]
    known_effective.update(_by_name(effective_counts, names, "effective_counts"))
    known_coverage.update(_by_name(coverage, names, "coverage"))
    return Report(
        names=list(names),
        auc=auc,
        norms=norms,
        cosine=cosine,
        confounds=confounds,
        counts=counts,
        eval_counts=eval_counts,
        notes=notes,
        effective_counts={n: [float(c) for c in v] for n, v in known_effective.items()},
        coverage={n: float(v) for n, v in known_coverage.items()},
    )


def _by_name(values: Any, names: Sequence[str], what: str | None = None) -> dict[str, Any]:
    """The entries of the mapping ``values`` for ``names``, keys matched case-insensitively.

    With ``what`` (a parameter the caller passed), a key naming no vector is an error;
    otherwise (metadata) entries for other names are ignored, and a non-mapping gives nothing.
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        if what is None:
            return {}
        raise VectorError(
            f"{what} must map vector names to values, got {type(values).__name__}; "
            f"pass a dict such as {{'Smiling': ...}}"
        )
    canonical = {n.casefold(): n for n in names}
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = canonical.get(str(key).casefold())
        if name is None:
            if what is not None:
                _resolve(str(key), list(names), what)  # raises with a "did you mean"
            continue
        if value is not None:
            out[name] = value
    return out


def _problems(
    names: Sequence[str],
    auc: np.ndarray,
    norms: np.ndarray,
    sizes: Mapping[str, Sequence[float]],
    coverage: Mapping[str, float],
) -> dict[str, list[str]]:
    """Per name, what is wrong with its vector and what to do, from the report's numbers.

    ``sizes``: per name ``[negatives, positives]`` it effectively rests on (or plain counts).
    """
    norms = np.asarray(norms, dtype=np.float64)
    finite = norms[np.isfinite(norms)]
    median = float(np.median(finite)) if finite.size else math.nan
    out: dict[str, list[str]] = {}
    for i, name in enumerate(names):
        found = []
        a = float(auc[i]) if i < len(auc) else math.nan
        if math.isfinite(a) and a <= 1.0 - MIN_AUC:
            found.append(
                f"held-out AUC {a:.2f}: the vector points away from its label; "
                "check that the label is 0/1 in the right sense and the vector its own"
            )
        elif math.isfinite(a) and a < MIN_AUC:
            found.append(
                f"held-out AUC {a:.2f} is near chance (< {MIN_AUC:g}): the vector does not "
                "follow its label, so edits along it do little; check its class sizes, or "
                "refit with method='mean' or 'conditional'"
            )
        for cls, size in zip(("negative", "positive"), sizes.get(name, ())):
            if size is not None and math.isfinite(size) and size < MIN_EFFECTIVE:
                if name in coverage:  # balanced: the weights are what shrank it
                    advice = "label more, or use method='mean' or 'conditional'"
                else:
                    advice = f"label more {cls} examples"
                found.append(
                    f"rests on {size:.0f} {cls} faces (effective sample size < "
                    f"{MIN_EFFECTIVE:g}): {advice}"
                )
        share = coverage.get(name)
        if share is not None and math.isfinite(share) and share < MIN_COVERAGE:
            found.append(
                f"balanced on {share:.0%} of the faces (< {MIN_COVERAGE:.0%}; the rest are in "
                "confounder cells lacking a class): balance on fewer confounders, or use "
                "method='conditional'"
            )
        n = float(norms[i]) if i < len(norms) else math.nan
        if n == 0.0:
            found.append("zero vector: it cannot edit anything; refit it")
        elif math.isfinite(n) and math.isfinite(median) and n < MIN_NORM_RATIO * median:
            found.append(
                f"norm {n:.3g} is under {MIN_NORM_RATIO:g} x the median norm {median:.3g}: "
                "an edit of strength 1 barely moves a face; check its AUC and class sizes, "
                "or refit with method='mean'"
            )
        if found:
            out[name] = found
    return out


# -- the heatmap -------------------------------------------------------------------------------

_NAN = "#c8c8c8"  # undefined cosines (a zero vector)
_LABEL_CHARS = 24


def _short(name: str) -> str:
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"


def _heatmap_figure(cosine: np.ndarray, names: Sequence[str], title: str | None) -> Any:
    """The cosine heatmap as a matplotlib ``Figure`` on its own Agg canvas (no pyplot, so it is
    safe to draw from several threads; imported here so that importing attributes stays fast).
    Cell (r, c) is ``cosine[r, c]`` at data coordinates (c, r)."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cosine = np.asarray(cosine, dtype=np.float64)
    n = len(names)
    cell = 0.42 if n <= 12 else 0.17  # inches
    labels = [_short(s) for s in names]
    label_in = 0.3 + 0.065 * max((len(s) for s in labels), default=1)
    width = label_in + n * cell + 1.1
    height = label_in + n * cell + (0.45 if title else 0.15)
    fig = Figure(figsize=(max(width, 3.0), max(height, 2.4)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = colormaps["RdBu_r"].with_extremes(bad=_NAN)
    im = ax.imshow(
        np.ma.masked_invalid(cosine), cmap=cmap, vmin=-1.0, vmax=1.0, interpolation="nearest"
    )
    size = 8 if n <= 12 else 6
    ax.set_xticks(range(n), labels=labels, rotation=90, fontsize=size)
    ax.set_yticks(range(n), labels=labels, fontsize=size)
    ax.tick_params(length=0)
    if n <= 12:
        for r in range(n):
            for c in range(n):
                v = float(cosine[r, c])
                ax.text(
                    c, r, "n/a" if np.isnan(v) else f"{v:+.2f}", ha="center", va="center",
                    fontsize=7, color="white" if not np.isnan(v) and abs(v) > 0.55 else "black",
                )  # fmt: skip
    fig.colorbar(im, ax=ax, ticks=[-1, 0, 1], shrink=0.8, aspect=25)
    if title:
        ax.set_title(title, fontsize=10)
    return fig

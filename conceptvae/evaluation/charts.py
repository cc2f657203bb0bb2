"""The evaluation report's charts, drawn by matplotlib: success curves and leakage bars.

Each chart is a :class:`matplotlib.figure.Figure` with its own Agg canvas: no pyplot, no display,
no global state, so charts can be drawn from several threads at once. matplotlib is imported
inside the functions, so importing this module (and ``conceptvae.evaluate``) stays fast. The
cosine heatmaps are :meth:`attributes.report.Report.cosine_heatmap`'s, drawn the same way.

The ``*_figure`` functions take an :func:`~conceptvae.evaluation.edits.evaluate` result and
return the figure (its axes hold the data drawn, which the tests read back); :func:`save_png`
writes one atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conceptvae._fs import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "attribute_leakage_figure",
    "bar_panels",
    "leakage_figure",
    "line_panels",
    "save_png",
    "success_figure",
]

DPI = 100
TOP_LEAKS = 10  # others shown in an attribute's leakage chart
Series = tuple[str, Sequence[float], Sequence[float | None]]  # name, xs, ys (None: not measured)
Bars = tuple[str, Sequence[float | None]]  # name, one value per group (None: not reached)


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches at :data:`DPI`, on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """``fig`` as PNG bytes, on white."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically; returns the path."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(fig))
    return path


def line_panels(
    panels: Sequence[tuple[str, Sequence[Series]]],
    *,
    xlabel: str = "",
    ylabel: str = "",
    ymax: float | None = 1.0,
    hline: float | None = None,
) -> Figure:
    """Line charts side by side, one per ``(title, series)`` panel, sharing the y axis; points
    marked, None values left out, an optional dashed horizontal line, the legend in the first."""
    fig = new_figure(3.4 * len(panels) + 0.6, 2.8)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (title, series) in zip(axes, panels):
        for k, (name, xs, ys) in enumerate(series):
            pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None]
            ax.plot(*zip(*pts), marker="o", markersize=3.5, color=f"C{k % 10}", label=name)
        if hline is not None:
            ax.axhline(hline, color="0.5", linestyle="--", linewidth=0.8)
        xs_all = sorted({float(x) for _, xs, _ in series for x in xs})
        if xs_all:
            ax.set_xticks(xs_all)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel)
        ax.grid(True, color="0.9")
        ax.set_axisbelow(True)
    axes[0].set_ylabel(ylabel)
    if ymax is not None:
        axes[0].set_ylim(-0.02 * ymax, 1.04 * ymax)
    if any(series for _, series in panels):
        axes[0].legend(fontsize=8, loc="best")
    return fig


def bar_panels(
    groups: Sequence[str],
    panels: Sequence[tuple[str, Sequence[Bars]]],
    *,
    xlabel: str = "",
    xmax: float | None = None,
) -> Figure:
    """Horizontal grouped bars side by side, one per ``(title, series)`` panel: one group per
    ``groups`` entry (top to bottom), one bar per series, the value printed at its end ("n/r":
    not reached, for None), the legend above the panels."""
    n_series = max((len(series) for _, series in panels), default=1)
    height = 0.9 + len(groups) * (0.13 * n_series + 0.12)
    fig = new_figure(4.2 * len(panels) + 1.0, max(height, 2.0))
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    bar = 0.8 / n_series
    values = [v for _, s in panels for _, vs in s for v in vs if v is not None]
    top = xmax if xmax is not None else max([*values, 0.05])
    for ax, (title, series) in zip(axes, panels):
        for k, (name, vs) in enumerate(series):
            colour = f"C{k % 10}"
            ys = [g + (k - (n_series - 1) / 2) * bar for g in range(len(groups))]
            drawn = [0.0 if v is None else float(v) for v in vs]
            ax.barh(ys, drawn, height=bar * 0.9, color=colour, label=name)
            for y, v in zip(ys, vs):
                text = "n/r" if v is None else f"{v:.2f}"
                x = 0.0 if v is None else float(v)
                ax.text(x + 0.01 * top, y, text, va="center", fontsize=6, color=colour)
        ax.set_xlim(0, top * 1.15)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.grid(True, axis="x", color="0.9")
        ax.set_axisbelow(True)
    axes[0].set_yticks(range(len(groups)), labels=list(groups), fontsize=8)
    axes[0].set_ylim(len(groups) - 0.5, -0.5)  # the first group at the top
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(  # above the panels, outside them: constrained layout makes room
        handles, labels, loc="outside upper center", ncols=max(n_series, 1), fontsize=8,
        frameon=False,
    )  # fmt: skip
    return fig


# ---------------------------------------------------------------------------------------------
# the report's charts


def success_series(result: dict[str, Any], attribute: str, direction: str) -> list[Series]:
    """Success over strength per method (strength 0: the reconstruction's baseline)."""
    e = result["edits"][attribute]
    strengths = result["settings"]["strengths"]
    base = e["baseline"][direction]
    series = []
    for m in result["settings"]["methods"]:
        res = e["methods"][m][direction]
        if res is not None:
            series.append((m, [0.0, *strengths], [base, *res["success"]]))
    return series


def success_figure(result: dict[str, Any], attribute: str) -> Figure:
    """``success_ATTR.png``: success against strength per method, adding and removing."""
    e = result["edits"][attribute]
    panels = [
        (
            f"{verb} {attribute} (n={e[f'n_{direction}']})",
            success_series(result, attribute, direction),
        )
        for direction, verb in (("add", "adding"), ("remove", "removing"))
    ]
    return line_panels(
        panels, xlabel="strength", ylabel="success", hline=result["settings"]["target_success"]
    )


def attribute_leakage_figure(result: dict[str, Any], attribute: str) -> Figure | None:
    """``leakage_ATTR.png``: the others flipped most when adding ``attribute``, at each
    method's strength for 90% success (* marks others correlated with it); None when no
    method reaches 90%."""
    e = result["edits"][attribute]
    methods = result["settings"]["methods"]
    per = {
        m: (e["methods"][m]["add"] or {}).get("leakage_by_attribute_at_90") or {} for m in methods
    }
    others = sorted(
        {o for d in per.values() for o in d},
        key=lambda o: -max(per[m].get(o) or 0.0 for m in methods),
    )[:TOP_LEAKS]
    if not others:
        return None
    groups = [o + (" *" if o not in e["independent"] else "") for o in others]
    series = [(m, [per[m].get(o) if per[m] else None for o in others]) for m in methods]
    fig = bar_panels(
        groups,
        [(f"adding {attribute}: another attribute flips (* correlated)", series)],
        xlabel="share of faces, at the strength for 90% success",
    )
    return fig


def leakage_figure(result: dict[str, Any]) -> Figure | None:
    """``leakage.png``: mean leakage at the 90% strength per attribute and method, adding and
    removing; None with no attribute evaluated."""
    attrs = list(result["edits"])
    if not attrs:
        return None
    methods = result["settings"]["methods"]
    panels = [
        (
            f"{verb}: mean leakage at the 90% strength",
            [
                (
                    m,
                    [
                        (result["edits"][a]["methods"][m][d] or {}).get("leakage_at_90")
                        for a in attrs
                    ],
                )  # fmt: skip
                for m in methods
            ],
        )
        for d, verb in (("add", "adding"), ("remove", "removing"))
    ]
    return bar_panels(attrs, panels, xlabel="mean flip rate of uncorrelated attributes")

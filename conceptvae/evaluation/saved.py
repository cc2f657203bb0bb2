"""A saved bank's edits, measured as they are: ``conceptvae evaluate RUN DATA --saved``.

:func:`~conceptvae.evaluation.edits.evaluate` fits each method's vectors again and compares
them; this measures the bank ``conceptvae edit`` uses (its vectors, strengths, removal scales,
footprints, redraws, swaps, holds and reaches) on DATA's test split, for every attribute the
judge recognises, adding at +1 and removing at -1: success (with its 95% interval by person),
leakage, free leakage, SSIM, whether the pair works and what flipped. The check for a bank
recalibrated on photos of another style (``vectors --recalibrate-only``), and what
``benchmarks/heldout_check.py`` builds its verdicts on.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from attributes.estimators import _resolve
from conceptvae._fs import atomic_write_json, atomic_write_text, json_safe, staged_dir
from conceptvae.calibration import (
    LEAKAGE_GOAL,
    SUCCESS_GOAL,
    VERDICTS,
    measure_edits,
    occluded,
    success_interval,
    summarize,
    verdict,
)
from conceptvae.data.cache import PreparedCache
from conceptvae.errors import DataError


def measure_saved(
    vae: Any,
    bank: Any,
    readers: Any,
    cache: PreparedCache,
    judge: Any,
    *,
    attributes: Sequence[str] | None = None,
    n_faces: int = 200,
    split: str = "test",
    floors: dict[tuple[str, str], dict[str, Any]] | None = None,
    latents: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``bank`` (a :class:`~attributes.bank.VectorBank` of ``vae``; ``readers``: its labels'
    :class:`~conceptvae.hold.Readers`, None to edit without holds) measured on up to
    ``n_faces`` faces of ``cache``'s ``split`` per attribute and direction, with the local
    blend, for every attribute of ``attributes`` (default: all) that ``judge`` recognises, the
    cache labels and the bank has a calibrated vector of; leakage is read over every attribute
    the judge recognises. ``floors``: per ``(attribute,
    direction)`` what the true edit does (``benchmarks/counterfactual.py``), for each pair's
    verdict (:func:`~conceptvae.calibration.verdict`). ``latents``: the run folder whose
    ``latents/`` caches the split's posterior means (None: encoded each time). Returns
    ``{"rows": [...], "verdicts": counts, "split", "n_faces", "judged", "edited"}``; each row has
    ``attribute``, ``direction``, ``method``, ``success`` and its ``success_interval``,
    ``leakage``, ``leakage_free``, ``ssim``, ``works`` and ``why`` (the largest flips and
    their reasons)."""
    from tqdm.auto import tqdm

    from conceptvae.vectors import bank_calibration, split_latents

    names = list(cache.attr_names)
    if attributes is not None:  # a typo is named, not dropped
        attributes = [names[_resolve(a, names, "--attributes")] for a in attributes]
    test_idx = cache.split(split)
    if test_idx.size == 0:
        raise DataError(f"{cache.path} has no {split} split to measure the edits on")
    judged = [n for n in judge.judged() if n in names]  # what leakage is measured over
    edited = [n for n in judged if n in bank.footprints and (attributes is None or n in attributes)]
    if not edited:
        raise DataError(
            f"no attribute of {cache.path} is both recognised by the judge and calibrated in "
            "the bank: fit or recalibrate the vectors on these labels first"
        )
    y_train = np.asarray(cache.labels[cache.split("train")])
    test_idx, z_test = split_latents(vae, cache, split, latents, progress=progress)
    y_test = np.asarray(cache.labels[test_idx])
    vi = cache.split("valid")  # what each target hides from the judge, read on real faces
    hidden = (
        occluded(judge, cache.batch, vi, np.asarray(cache.labels[vi]), names, judged)
        if vi.size else {}
    )  # fmt: skip
    cal = bank_calibration(bank, readers)
    meta = bank.metadata
    rows = []
    for a in tqdm(edited, desc="edits", unit="attribute", disable=not progress, leave=False):
        res = measure_edits(
            vae, judge, cal, a, faces=cache.batch, idx=test_idx, z=z_test, labels=y_test,
            names=names, train_labels=y_train, judged=judged, hidden=hidden.get(a, []),
            blends=("local", "residual"), n_faces=n_faces,
            groups=None if cache.identity is None else cache.identity[test_idx],
        )  # fmt: skip
        method = meta.get("methods", {}).get(a, meta.get("method"))
        # the goals judged as everywhere else (calibration.summarize), on the bank's one method
        for r in summarize({a: {"methods": {method: res}}}, [method]):
            d = r["direction"]
            row = {
                **{k: r[k] for k in ("attribute", "direction", "success", "leakage",
                                     "leakage_visible", "leakage_free", "ssim_outside", "works",
                                     "works_free", "why")},
                "n": res[d]["n"],
                "ssim": res[d]["local"]["ssim"],
                "redraw": res[d]["redraw"],
                "null_leakage_free": res[d]["null"]["leakage_free"],
                "residual_success": res[d]["residual"]["success"],
                "method": method,
                "hidden": hidden.get(a, []),
                "held": res[d].get("held", []),
                "reach": res[d].get("reach"),
                "push": res[d].get("push"),
                # by person: a person's faces tend to succeed or fail together
                "success_interval": res[d]["local"]["success_interval"],
                "faces_interval": success_interval(r["success"], res[d]["n"]),
                "design_effect": res[d]["local"]["design_effect"],
            }  # fmt: skip
            floor = (floors or {}).get((a, d))
            row["verdict"], row["reason"] = verdict(row, floor)
            row["floor"] = floor
            rows.append(row)
    counts = {k: sum(r["verdict"] == k for r in rows) for k in VERDICTS}
    return {"rows": rows, "verdicts": counts, "split": split, "n_faces": n_faces,
            "judged": judged, "edited": edited}  # fmt: skip


def saved_markdown(result: dict[str, Any], title: str) -> str:
    """The report of :func:`measure_saved`: a summary and one row per pair."""
    rows = result["rows"]

    def mean(key: str) -> float:
        return float(np.mean([r[key] for r in rows]))

    works = sum(bool(r["works"]) for r in rows)
    short = sum(r["success"] < SUCCESS_GOAL for r in rows)
    lines = [
        f"# {title}",
        "",
        f"The saved vectors as `conceptvae edit` makes them (strength +1 adds, -1 removes; the "
        f"local blend, the bank's swaps, holds and reaches), on up to {result['n_faces']} "
        f"{result['split']} faces per attribute and direction, judged by a classifier trained "
        f"on the data's train split ({len(result['judged'])} attributes it recognises).",
        "",
        f"- **{works} of {len(rows)}** (attribute, direction) pairs work: success >= "
        f"{SUCCESS_GOAL:.0%} and leakage <= {LEAKAGE_GOAL:.0%}",
        f"- success under {SUCCESS_GOAL:.0%} in {short}; mean success "
        f"{np.mean([r['success'] for r in rows]):.3f}, mean leakage "
        f"{np.mean([r['leakage'] for r in rows]):.2%} (free {np.mean([r['leakage_free'] for r in rows]):.2%}), "  # noqa: E501
        f"mean SSIM to the photo {np.mean([r['ssim'] for r in rows]):.3f}",
        "",
        "*Leakage*: the mean flip rate of the judged attributes whose labels correlate with the "
        "target by |r| < 0.3; *free*: only those neither implied by the labels, nor hidden by "
        "the target, nor weakly judged. A success under the goal whose interval (by person) "
        "reaches it may be luck of the faces drawn.",
        "",
        "| attribute | direction | method | success (95% interval) | n | leakage | free leakage "
        "| SSIM | works | largest flips (why) |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lo, hi = r["success_interval"]
        lines.append(
            f"| {r['attribute']} | {r['direction']} | {r['method']} | {r['success']:.3f} "
            f"({lo:.3f}-{hi:.3f}) | {r['n']} | {r['leakage']:.3f} | {r['leakage_free']:.3f} | "
            f"{r['ssim']:.3f} | {'yes' if r['works'] else 'no'} | {'; '.join(r['why']) or '-'} |"
        )
    return "\n".join(lines) + "\n"


def write_saved_report(
    result: dict[str, Any], out_dir: str | os.PathLike, *, title: str, force: bool = False
) -> list[Path]:
    """``report.md`` and ``report.json`` of :func:`measure_saved`, built aside and moved into
    ``out_dir`` when complete (a non-empty one is refused unless ``force``)."""
    out_dir = Path(out_dir)
    with staged_dir(out_dir, force) as stage:
        atomic_write_json(stage / "report.json", json_safe(result, digits=6))
        atomic_write_text(stage / "report.md", saved_markdown(result, title))
    return [out_dir / "report.json", out_dir / "report.md"]

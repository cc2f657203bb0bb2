"""The evaluation report: ``report.json``, ``report.md``, the charts and the example grids.

:func:`write_report` takes an :func:`~conceptvae.evaluation.edits.evaluate` result; the charts
come from :mod:`conceptvae.evaluation.charts` (matplotlib), the example grids from
:func:`conceptvae.grids.image_grid` (pictures, not charts).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from attributes.report import Report
from conceptvae._fs import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    json_safe,
    staged_dir,
)
from conceptvae.evaluation import charts

__all__ = ["calibrated_markdown", "write_report"]


def _save_png(img: Image.Image, path: Path) -> Path:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "attribute"


def _f(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def write_report(
    result: dict[str, Any], out_dir: str | os.PathLike, *, force: bool = False
) -> list[Path]:
    """Write ``report.json``, ``report.md`` and PNG charts of an :func:`evaluate` result.

    Charts (matplotlib): ``success_ATTR.png`` (success against strength per method, adding and
    removing), ``leakage.png`` (mean leakage at the 90% strength, per attribute and method),
    ``leakage_ATTR.png`` (the most flipped other attributes there), ``cosine_METHOD.png`` (the
    vectors' cosine heatmap); and ``examples_ATTR.png`` (faces edited by each method at its 90%
    strength). The folder is built aside and moved into place when complete; a non-empty
    ``out_dir`` raises :class:`OutputError` unless ``force``. Returns the written paths.
    """
    out_dir = Path(out_dir)
    written: list[str] = []
    with staged_dir(out_dir, force) as stage:
        figures: dict[str, dict[str, str]] = {}
        if result.get("status") == "ok":
            figures = _draw_figures(result, stage, written)
        data = json_safe({k: v for k, v in result.items() if k != "examples"}, digits=6)
        data["figures"] = figures
        atomic_write_json(stage / "report.json", data)
        atomic_write_text(stage / "report.md", _markdown(result, figures))
        written = ["report.json", "report.md", *written]
    return [out_dir / name for name in written]


def _draw_figures(result: dict[str, Any], stage: Path, written: list[str]) -> dict[str, Any]:
    """Draw every chart and example grid into ``stage``; returns their names by kind, and
    appends each to ``written``."""

    def save(fig: Any, name: str) -> str:
        charts.save_png(fig, stage / name)
        written.append(name)
        return name

    def save_image(img: Image.Image, name: str) -> str:
        _save_png(img, stage / name)
        written.append(name)
        return name

    figures: dict[str, Any] = {"attributes": {}}
    for a in result["edits"]:
        files = {"success": save(charts.success_figure(result, a), f"success_{_slug(a)}.png")}
        fig = charts.attribute_leakage_figure(result, a)
        if fig is not None:
            files["leakage"] = save(fig, f"leakage_{_slug(a)}.png")
        if result["examples"].get(a):
            files["examples"] = save_image(
                _example_grid(result["examples"][a]), f"examples_{_slug(a)}.png"
            )
        figures["attributes"][a] = files
    fig = charts.leakage_figure(result)
    if fig is not None:
        figures["leakage"] = {"all": save(fig, "leakage.png")}
    figures["cosine"] = {}
    for m, v in result.get("vectors", {}).items():
        name = f"cosine_{_slug(m)}.png"
        _cosine_report(v).cosine_heatmap(stage / name, title=f"cosine between {m} vectors")
        written.append(name)
        figures["cosine"][m] = name
    return figures


def _cosine_report(v: dict[str, Any]) -> Report:
    """The vectors' quality as stored in the result, back as a :class:`Report` (for its
    heatmap)."""
    return Report(
        names=v["names"],
        auc=np.array([np.nan if x is None else x for x in v["auc"].values()]),
        norms=np.array([np.nan if x is None else x for x in v["norms"].values()]),
        cosine=np.array([[np.nan if c is None else c for c in row] for row in v["cosine"]]),
        confounds={},
    )


def _example_grid(ex: dict[str, Any]) -> Image.Image:
    from conceptvae.grids import image_grid

    images = torch.from_numpy(ex["images"]).float() / 255.0
    s = images.shape[-1]
    return image_grid(
        images,
        row_labels=ex["row_labels"],
        col_labels=ex["col_labels"],
        title=ex["title"],
        cell=s * max(1, 96 // s),
    )


def _markdown(result: dict[str, Any], figures: dict[str, Any]) -> str:
    """``report.md``: the settings, then one section per measurement, then per attribute."""
    lines = _md_intro(result) + _md_reconstruction(result) + _md_judge(result)
    if result["status"] != "ok":
        lines += ["## No edit metrics", "", f"**{result['message']}**", ""]
        return "\n".join(lines)
    lines += _md_prior(result)
    lines += _md_strength_table(result, figures)
    lines += calibrated_markdown(result)
    lines += ["", "## Per attribute", ""]
    for a in result["edits"]:
        lines += _md_attribute(result, a, figures.get("attributes", {}).get(a, {}))
    if figures.get("cosine"):
        lines += ["## Vector cosines", ""]
        lines += [f"![{m}]({f})" for m, f in figures["cosine"].items()]
        lines.append("")
    return "\n".join(lines)


def _md_intro(result: dict[str, Any]) -> list[str]:
    st = result["settings"]
    return [
        "# Edit evaluation",
        "",
        f"Model `{result['model_hash']}`, data `{result['data']}` ({result['split']} split), "
        f"{result.get('seconds', 0):.0f} s. Methods {', '.join(st['methods'])}; strengths "
        f"{', '.join(f'{s:g}' for s in st['strengths'])}; up to {st['n_faces']} faces per "
        f"direction; seed {st['seed']}.",
        "",
        "**Success**: share of faces without the attribute that the judge calls positive after "
        "adding strength x vector (removing: faces with it called negative after subtracting); "
        "strength 0 is the plain reconstruction D(mu). **Leakage**: share of faces where another "
        f"judged attribute flips, averaged over those whose labels correlate with the target by "
        f"|r| < {st['correlated_r']}. **SSIM**: between D(mu) and the edit.",
        "",
    ]


def _md_reconstruction(result: dict[str, Any]) -> list[str]:
    rec = result["reconstruction"]
    return [
        "## Reconstruction",
        "",
        "| faces | MSE | PSNR (dB) | SSIM |",
        "|---:|---:|---:|---:|",
        f"| {rec['n']} | {rec['mse']:.5f} | {rec['psnr']:.2f} | {rec['ssim']:.4f} |",
    ]


def _md_judge(result: dict[str, Any]) -> list[str]:
    j = result["judge"]
    lines = [
        "",
        "## The judge",
        "",
        f"Balanced accuracy on valid (each half scored with the threshold chosen on the other); "
        f"attributes at >= {result['settings']['min_accuracy']:.2f} are judged.",
        "",
        "| attribute | balanced accuracy | threshold | judged |",
        "|---|---:|---:|:---:|",
    ]
    for n, a in j["accuracy"].items():
        lines.append(
            f"| {n} | {_f(a, 3)} | {j['thresholds'][n]:.3f} | {'yes' if n in j['judged'] else ''} |"
        )
    left = ", ".join(f"{n} ({_f(a, 3)})" for n, a in j["left_out"].items())
    return [*lines, "", f"Left out ({len(j['left_out'])}): {left or 'none'}.", ""]


def _md_prior(result: dict[str, Any]) -> list[str]:
    pr = result["prior"]
    lines = [
        "## Prior samples against the data",
        "",
        f"Rate of each attribute: labels and judge on {pr['n_real']} real {result['split']} "
        f"faces, judge on their reconstructions and on {pr['n_samples']} samples z ~ N(0, I).",
        "",
        "| attribute | labels | judge: real | judge: reconstructed | judge: samples |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, v in pr["rates"].items():
        lines.append(
            f"| {n} | {_f(v['labels'], 3)} | {_f(v['real'], 3)} | {_f(v['reconstructed'], 3)} "
            f"| {_f(v['samples'], 3)} |"
        )
    return lines


def _md_strength_table(result: dict[str, Any], figures: dict[str, Any]) -> list[str]:
    st = result["settings"]
    lines = [
        "",
        f"## Strength for {st['target_success']:.0%} success, and leakage there",
        "",
        "Linear interpolation on the success curve; – where no strength measured reaches it.",
        "",
        "| attribute | method | add: strength | leakage | SSIM "
        "| remove: strength | leakage | SSIM |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for a, e in result["edits"].items():
        for m in st["methods"]:
            cells = []
            for d in ("add", "remove"):
                r = e["methods"][m][d]
                if r is None:
                    cells += ["no faces", "", ""]
                else:
                    cells += [
                        _f(r["strength_90"]),
                        _f(r["leakage_at_90"], 3),
                        _f(r["ssim_at_90"], 3),
                    ]
            lines.append(f"| {a} | {m} | " + " | ".join(cells) + " |")
    if figures.get("leakage"):
        lines += ["", f"![leakage]({figures['leakage']['all']})"]
    if result.get("skipped"):
        lines += [
            "",
            "Not evaluated: " + "; ".join(f"{a}: {w}" for a, w in result["skipped"].items()),
        ]
    return lines


def _md_attribute(result: dict[str, Any], a: str, files: dict[str, str]) -> list[str]:
    """One attribute's section: its faces and confounds, then per direction the curves of
    every method and the most flipped others, then its charts."""
    st, e = result["settings"], result["edits"][a]
    lines = [f"### {a}", ""]
    cond = f" Conditional method conditions on {e['condition']}." if e["condition"] else ""
    corr = [
        f"{o} ({e['correlation'][o]:+.2f})" for o in e["correlation"] if o not in e["independent"]
    ]
    lines.append(
        f"{e['n_add']} faces to add it to, {e['n_remove']} to remove it from.{cond} "
        f"Leakage counts {len(e['independent'])} uncorrelated attributes; correlated (left "
        f"out of the mean): {', '.join(corr) or 'none'}."
    )
    if e["identity_traits"] is not None:
        traits = ", ".join(e["identity_traits"]) or "none"
        lines.append(f"Identity traits checked (SynthFaces): {traits}.")
    for d, verb in (("add", "Adding"), ("remove", "Removing")):
        if e["baseline"][d] is not None:
            lines += _md_direction(e, d, verb, st["methods"], st["strengths"])
    lines.append("")
    for key in ("success", "leakage", "examples"):
        if key in files:
            lines.append(f"![{a} {key}]({files[key]})")
    lines.append("")
    return lines


def _md_direction(
    e: dict[str, Any], d: str, verb: str, methods: list[str], strengths: list[float]
) -> list[str]:
    base = e["baseline"][d]
    head = "| method | " + " | ".join(["0", *(f"{s:g}" for s in strengths)]) + " |"
    rule = "|---|" + "---:|" * (len(strengths) + 1)
    lines = ["", f"{verb}: success / mean leakage / SSIM" + (
        " / identity kept" if e["identity_traits"] else ""), "", head, rule]  # fmt: skip
    for m in methods:
        r = e["methods"][m][d]
        cells = [f"{_f(base)} / 0 / 1" + (" / 1" if e["identity_traits"] else "")]
        for i in range(len(strengths)):
            c = " / ".join((_f(r["success"][i]), _f(r["leakage_mean"][i], 3), _f(r["ssim"][i])))
            if r["identity_kept"] is not None:
                c += f" / {_f(r['identity_kept'][i])}"
            cells.append(c)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    tops = []
    for m in methods:
        by = e["methods"][m][d]["leakage_by_attribute_at_90"]
        if by:
            top = sorted(by.items(), key=lambda kv: -(kv[1] or 0))[:3]
            tops.append(f"{m}: " + ", ".join(f"{o} {v:.2f}" for o, v in top))
    if tops:
        lines += ["", "Most flipped at the 90% strength: " + "; ".join(tops) + "."]
    return lines


def _hold_tag(cell: dict[str, Any]) -> str:
    """What follows a method held in the tables: its hold, whether it holds firmly, its
    push (a longer step held) and its reach (each face stopped where the model reads the
    target clearly)."""
    tag = ""
    if cell.get("held"):
        tag = " + firm hold" if cell.get("hold_margin") is not None else " + hold"
        tag += f" x{cell['push']:g}" if cell.get("push") is not None else ""
    return tag + (" + reach" if cell.get("reach") is not None else "")


def calibrated_markdown(result: dict[str, Any]) -> list[str]:
    """The calibrated section of report.md: strength +1/-1 per attribute, best method, and
    every method and blend."""
    from conceptvae.calibration import (
        IMPLIED_SUPPORT,
        LEAKAGE_GOAL,
        RELIABLE_ACCURACY,
        SUCCESS_GOAL,
    )

    summary, cal = result.get("calibrated_summary"), result.get("calibrated")
    if not summary:
        return []
    methods = result["settings"]["methods"]
    works = sum(r["works"] for r in summary)
    visible = sum(r["works_visible"] for r in summary)
    free = sum(r.get("works_free", False) for r in summary)
    lines = [
        "",
        "## Calibrated edits: strength +1 and -1",
        "",
        "Each method's vectors calibrated on the valid split (strength 1: the smallest step "
        "at which 98% of valid faces are judged as wanted, with the `local` blend)"
        + (
            ", with swaps and holds chosen there as `conceptvae vectors` chooses them (**+ hold**: "
            "the direction's hold was kept, and its edits hold the labels free to vary with the "
            "target; **+ firm hold**: also the readings its step weakened by more than 1 logit)"
            if result["settings"].get("holds")
            else ""
        )
        + ", then every "
        f"attribute added (+1) and removed (-1) on {result['split']} faces. **Works**: success "
        f">= {SUCCESS_GOAL:.0%} with leakage <= {LEAKAGE_GOAL:.0%}. **Leakage**: mean flip "
        f"rate over the judged attributes whose labels correlate with the target by |r| < "
        f"{result['settings']['correlated_r']}; **visible**: without those the target hides "
        "(the judge's balanced accuracy on them among real faces with the target < 0.90); "
        "**free**: only the attributes whose flips the vector alone is to blame for, leaving out "
        f"those the target's new value fixes in the train labels (P < {IMPLIED_SUPPORT:.0%} or > "
        f"{1 - IMPLIED_SUPPORT:.0%}), those it hides, and those the judge tells below "
        f"{RELIABLE_ACCURACY:.2f} balanced accuracy. SSIM outside: only where the vector's "
        "footprint does not reach. **Largest flips**: each with its reason and its flip rate "
        "under the null edit (the same blend with no step: the model's redrawing alone). "
        "**Verdict**: works; *data ties* (it succeeds, and what leaks beyond 2% is implied, "
        "hidden or weakly judged labels); *too weak* (success under "
        f"{SUCCESS_GOAL:.0%}); *vector leaks* (free leakage over {LEAKAGE_GOAL:.0%}).",
        "",
        f"{works} of {len(summary)} (attribute, direction) pairs work for their best method "
        f"({visible} counting visible leakage only, {free} counting free leakage only).",
        "",
        "| attribute | direction | best method | success | leakage | visible leakage | "
        "free leakage | SSIM | SSIM outside | verdict | every method within 10 points | "
        "success by method | largest flips (why) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|:---:|:---:|---|---|",
    ]
    for r in summary:
        by = ", ".join(f"{m} {_f(v)}" for m, v in r["success_by_method"].items())
        why = "; ".join(r.get("why") or []) or "-"
        kind = r.get("verdict") or ("works" if r["works"] else "-")
        lines.append(
            f"| {r['attribute']} | {r['direction']} | {r['best_method']}"
            f"{_hold_tag(r)} | {_f(r['success'])} | "
            f"{_f(r['leakage'], 3)} | {_f(r['leakage_visible'], 3)} | "
            f"{_f(r.get('leakage_free'), 3)} | {_f(r['ssim'], 3)} | "
            f"{_f(r['ssim_outside'], 3)} | {kind} | "
            f"{'yes' if r['methods_within_10'] else 'no'} | {by} | {why} |"
        )
    blends = [b for b in ("local", "residual", "replace")
              if any(b in (v["methods"][m].get("add") or {}) for v in cal.values()
                     for m in v["methods"])]  # fmt: skip
    lines += [
        "",
        "Every method and blend (success / leakage / SSIM outside the footprint):",
        "",
        "| attribute | direction | method | " + " | ".join(blends) + " | strength 1 (raw) |",
        "|---|---|---|" + "---:|" * len(blends) + "---:|",
    ]
    for a, v in cal.items():
        for d in ("add", "remove"):
            for m in methods:
                r = v["methods"].get(m, {}).get(d)
                if r is None:
                    continue
                c = v["methods"][m]["calibration"]
                unit = c["unit"] * (c["removal_scale"] if d == "remove" else 1.0)
                cells = [
                    f"{_f(r[b]['success'])} / {_f(r[b]['leakage'], 3)} / "
                    f"{_f(r[b]['ssim_outside'], 3)}"
                    for b in blends
                ]
                m_ = f"{m}{_hold_tag(r)}"
                lines.append(f"| {a} | {d} | {m_} | " + " | ".join(cells) + f" | {unit:.2f} |")
        if v["hidden"]:
            lines.append(f"| {a} | | hides: {', '.join(v['hidden'])} | |" + " |" * len(blends))
    return lines

"""The edit evaluation: does an edit do what it says, and what else does it do?

Concept-vector papers show a few edited faces; they rarely measure whether an edit worked. Here a
separate image classifier, the **judge** (:mod:`conceptvae.evaluation.judge`), is asked by
:func:`evaluate` about decoded edits of held-out faces:

- **success**: the share of faces without the attribute that the judge calls positive after
  adding ``strength * v`` (and, for removal, faces with it judged negative after subtracting),
  as a curve over strength, with strength 0 (the plain reconstruction) as the baseline;
- **leakage**: the share of faces whose judged value of another attribute flips, per other
  attribute, and its mean and sum over the others whose labels are not correlated with the
  target (|r| < 0.3: a smile may rightly open the mouth);
- **preservation**: SSIM between the reconstruction and the edit, and on SynthFaces whether the
  judged identity-level traits (hair colour, beard, skin, ...) stay the same;
- the **strength** each method needs for 90% success, and its leakage and SSIM there.

Only attributes the judge itself gets right (balanced accuracy >= 0.90 on valid) are judged; the
others are listed with their accuracy as left out. :func:`conceptvae.evaluation.report.write_report`
turns the result into ``report.json``, ``report.md`` and charts.

Cost: every edit is decoded and judged on the model's device; an evaluation decodes about
``attributes x methods x strengths x 2 * n_faces`` images. On one CPU thread a 64 px model
decodes ~1,600 images/s and the judge reads ~3,000/s; measured on a busy 2-core machine, one
attribute at the defaults (4 methods x 5 strengths x 600 faces = 12,000 edits) took 21 s, plus
~7 s once for reconstruction, prior samples and fitting. The 27 attributes the judge passes on
SynthFaces thus take ~10 minutes (~5 on an idle core). Narrow ``attributes``, ``methods`` or
``n_faces`` to make it cheaper.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attributes.estimators import _correlations, _resolve
from attributes.report import quality_report
from conceptvae.calibration import strength_for
from conceptvae.data.cache import PreparedCache
from conceptvae.errors import DataError
from conceptvae.evaluation.judge import MIN_ACCURACY, Judge, _require_labels
from conceptvae.evaluation.metrics import psnr, ssim
from conceptvae.vectors import data_key, fit_method, make_estimator, split_latents

__all__ = ["METHODS", "SYNTH_IDENTITY_TRAITS", "evaluate"]

REPORT_FORMAT = 1
# what evaluate measures by default; "adjusted", "orthogonal" and "steered" are opt-in
# (--methods): the report's cost grows per method, and the last two fit a normal (and a decoder
# direction) per free label
METHODS = ("mean", "balanced", "classifier", "conditional")
ALL_METHODS = (*METHODS, "adjusted", "orthogonal", "steered")
TARGET_SUCCESS = 0.90  # "the strength a method needs" is the strength reaching this success
CORRELATED = 0.3  # others with |label r| >= this to the target may rightly change with it
EXAMPLE_FACES = 3  # rows per direction in the example grids

# Traits SynthFaces draws per person (conceptvae.data.synth._identity), not per image. Bald and
# Receding_Hairline are left out: a hat hides them per image.
SYNTH_IDENTITY_TRAITS: tuple[str, ...] = (
    "Male", "Young", "Pale_Skin", "Chubby", "Double_Chin", "Bags_Under_Eyes", "Bushy_Eyebrows",
    "Arched_Eyebrows", "Big_Nose", "Big_Lips", "Narrow_Eyes", "Bangs", "Wavy_Hair",
    "Straight_Hair", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "No_Beard", "Goatee",
    "Mustache", "Sideburns",
)  # fmt: skip


def _interp(strengths: Sequence[float], values: Sequence[float | None], at: float, at_zero: float):
    """``values`` over ``strengths`` (with ``at_zero`` at strength 0) read at ``at``."""
    if at is None or any(v is None for v in values):
        return None
    return float(np.interp(at, [0.0, *strengths], [at_zero, *values]))


def _is_synthfaces(cache: PreparedCache) -> bool:
    """A SynthFaces cache: its source folder's README says so, or it has CelebA's 40 names with
    exactly the attributes SynthFaces never draws all 0."""
    source = cache.meta.get("source")
    if isinstance(source, str):
        try:
            with open(Path(source) / "README.md", encoding="utf-8") as f:
                if f.readline().startswith("# SynthFaces"):
                    return True
        except OSError:
            pass
    from conceptvae.data import CELEBA_ATTRIBUTES
    from conceptvae.data.synth import RENDERED_ATTRIBUTES

    if list(cache.attr_names) != list(CELEBA_ATTRIBUTES):
        return False
    ever = np.asarray(cache.labels).any(0)
    drawn = np.array([a in RENDERED_ATTRIBUTES for a in CELEBA_ATTRIBUTES])
    return bool(not ever[~drawn].any())


def _top_confound(r: np.ndarray, t: int, usable: np.ndarray) -> int | None:
    strength = np.abs(r[t]).copy()
    strength[t] = -1.0
    strength[~usable] = -1.0
    k = int(np.argmax(strength))
    return None if strength[k] < 0 else k


def _fit_method(
    vae: Any,
    method: str,
    z: np.ndarray,
    y: np.ndarray,
    names: list[str],
    targets: list[str],
    conditions: dict[str, str],
) -> dict[str, np.ndarray]:
    """name -> (D,) vector of ``method`` for each target, fitted on train latents, each
    estimator made as ``conceptvae vectors`` makes it (:func:`~conceptvae.vectors.make_estimator`:
    ``orthogonal`` and ``steered`` on the balanced vector, ``conditional`` on the mean)."""
    if method != "conditional":
        est = fit_method(vae, method, z, y, names, targets)
        return {n: est.vector(n) for n in targets}
    out: dict[str, np.ndarray] = {}
    for cond in dict.fromkeys(conditions[t] for t in targets):
        group = [t for t in targets if conditions[t] == cond]
        est = make_estimator("conditional", group, [cond]).fit(z, y, names)
        out.update({n: est.vector(n) for n in group})
    return out


def _decode(vae: Any, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z.to(vae.device)).float()


def _rates(decisions: torch.Tensor) -> list[float]:
    return [float(v) for v in decisions.float().mean(0).cpu()]


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


@torch.inference_mode()
def evaluate(
    vae: Any,
    cache: PreparedCache,
    run: str | os.PathLike | None,
    judge: Judge,
    *,
    methods: Sequence[str] = METHODS,
    strengths: Sequence[float] = (0.5, 1, 1.5, 2, 3),
    attributes: Sequence[str] | None = None,
    n_faces: int = 300,
    n_samples: int = 1000,
    n_recon: int = 2000,
    condition_default: str = "Male",
    min_accuracy: float = MIN_ACCURACY,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
    calibrated: bool = True,
    blends: Sequence[str] = ("local", "residual", "replace"),
    groups: list[list[str]] | None = None,
    holds: bool = True,
) -> dict[str, Any]:
    """Measure concept-vector edits of ``vae`` with ``judge`` on the cache's test split (valid
    when there is no test split).

    With ``calibrated`` (and a valid split besides the test split), each method's vectors are
    also put on the calibrated scale on the valid split (:func:`conceptvae.calibration.calibrate`,
    the ``local`` blend) and every judged attribute is added (+1) and removed (-1) on test faces
    with each of ``blends``: ``result["calibrated"]`` holds success, leakage (all independent
    attributes, and those the target does not hide), SSIM and SSIM outside the footprint, and
    ``result["calibrated_summary"]`` the best method per attribute and direction. With
    ``holds`` each method's vectors also get their holds as ``conceptvae vectors`` chooses them
    (:func:`conceptvae.hold.choose_holds`, readers fitted on the train split, chosen on the
    valid split), so the calibrated edits are the ones ``conceptvae edit`` makes; a pair whose
    hold was kept says so (``held``).

    Vectors of each method are fitted on the train split's posterior means (cached in
    ``RUN/latents`` when ``run`` is given). For each judged attribute, up to ``n_faces`` faces
    without it (to add it) and ``n_faces`` with it (to remove it) are edited at each strength
    (``z = mu +/- s * v``), decoded and judged. ``conditional`` conditions on
    ``condition_default`` (on the most correlated other label for that attribute itself, or when
    the data has no such label). Also measured: reconstruction MSE/PSNR/SSIM of ``D(mu)`` on up to
    ``n_recon`` faces, and the judge's attribute rates on ``n_samples`` prior samples against
    real faces.

    Returns a JSON-ready dict (see :func:`~conceptvae.evaluation.report.write_report`), except
    ``result["examples"]``, which holds uint8 image arrays for the example grids. With no
    attribute judged at ``min_accuracy``, ``result["status"]`` is ``"no_judged_attributes"`` and
    there are no edit or sample metrics. See the module docstring for the cost.
    """
    _require_labels(cache, "evaluate")
    start = time.perf_counter()
    vae.eval()  # latents may come from RUN/latents, so encode_means may not be what sets it
    methods, strengths = _check_settings(methods, strengths, n_faces, n_samples, n_recon)
    _check_sizes(vae, cache, judge)
    names = list(cache.attr_names)
    split = next((s for s in ("test", "valid") if cache.split(s).size), None)
    if split is None:
        raise DataError(f"{cache.path} has no test or valid images to evaluate edits on")
    model_hash = vae.model_hash()
    common = {"batch_size": batch_size, "progress": progress, "model_hash": model_hash}
    ev = _Split(*split_latents(vae, cache, split, run, **common))
    ev.labels = np.asarray(cache.labels[ev.idx])
    judged = [n for n in judge.judged(min_accuracy) if n in names]
    settings = {
        "methods": methods,
        "strengths": strengths,
        "n_faces": n_faces,
        "n_samples": n_samples,
        "n_recon": n_recon,
        "condition_default": condition_default,
        "min_accuracy": min_accuracy,
        "target_success": TARGET_SUCCESS,
        "correlated_r": CORRELATED,
        "seed": seed,
        "holds": bool(holds and calibrated),
    }
    result = _header(model_hash, cache, split, settings, judge, judged)

    result["reconstruction"], real = _reconstruction(
        vae, cache, judge, ev, judged, n_recon, batch_size, seed
    )
    if not judged:
        result["status"] = "no_judged_attributes"
        result["message"] = _no_judged_message(judge, min_accuracy)
        result["seconds"] = round(time.perf_counter() - start, 1)
        return result
    result["prior"] = _prior_rates(vae, judge, ev, names, judged, real, n_samples, batch_size, seed)

    tr = _Split(*split_latents(vae, cache, "train", run, **common))
    if tr.idx.size == 0:
        raise DataError(f"{cache.path} has no train images to fit vectors on")
    tr.labels = np.asarray(cache.labels[tr.idx])
    targets, skipped, conditions = _choose_targets(
        judge, names, judged, tr.labels, attributes, condition_default, methods, min_accuracy
    )
    result["attributes"] = targets
    result["skipped"] = skipped
    vectors, result["vectors"] = _fit_vectors(vae, methods, targets, conditions, names, tr, ev)

    result["synthfaces"] = synth = _is_synthfaces(cache)
    result["edits"], result["examples"] = _run_edits(
        vae, judge, cache, ev, names, judged, _correlations(tr.labels), conditions, synth,
        vectors, methods, strengths, targets, n_faces, batch_size, seed, progress,
    )  # fmt: skip
    if calibrated and targets:
        result["calibrated"], result["calibrated_summary"] = _calibrated_edits(
            vae, judge, cache, run, common, names, judged, targets, vectors, methods, blends,
            ev.z, ev.idx, ev.labels, tr.z, tr.labels, split, n_faces, seed, progress, groups,
            holds,
        )  # fmt: skip
    result["summary"] = _summary(result["edits"], methods)
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


@dataclass
class _Split:
    """One split's rows in the cache, their posterior means (N, D) and labels (N, A)."""

    idx: np.ndarray
    z: np.ndarray
    labels: np.ndarray | None = None


def _check_settings(
    methods: Sequence[str], strengths: Sequence[float], n_faces: int, n_samples: int, n_recon: int
) -> tuple[list[str], list[float]]:
    """The methods as a list and the strengths sorted, or a ValueError saying what is wrong."""
    methods = list(methods)
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad or not methods:
        raise ValueError(
            f"unknown method(s) {bad or methods}: use some of {', '.join(ALL_METHODS)}"
        )
    strengths = sorted(float(s) for s in strengths)
    if not strengths or strengths[0] <= 0 or not all(map(math.isfinite, strengths)):
        raise ValueError(f"strengths must be positive numbers, got {strengths}")
    for name, v, low in (("n_faces", n_faces, 1), ("n_samples", n_samples, 0),
                         ("n_recon", n_recon, 1)):  # fmt: skip
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
    return methods, strengths


def _check_sizes(vae: Any, cache: PreparedCache, judge: Judge) -> None:
    size = vae.config.image_size
    if cache.image_size != size or judge.image_size != size:
        raise DataError(
            f"image sizes differ: the model takes {size} px, {cache.path} holds "
            f"{cache.image_size} px and the judge was trained on {judge.image_size} px; use one "
            "resolution for all three"
        )


def _header(
    model_hash: str,
    cache: PreparedCache,
    split: str,
    settings: dict[str, Any],
    judge: Judge,
    judged: list[str],
) -> dict[str, Any]:
    """The result's first keys: what was evaluated, with which settings, and the judge."""
    return {
        "format_version": REPORT_FORMAT,
        "status": "ok",
        "model_hash": model_hash,
        "data": str(cache.path),
        "data_key": data_key(cache),
        "split": split,
        "settings": settings,
        "judge": {
            "accuracy": {n: judge.accuracy[n] for n in judge.names},
            "thresholds": {n: float(t) for n, t in zip(judge.names, judge.thresholds)},
            "judged": judged,
            "left_out": {n: judge.accuracy[n] for n in judge.names if n not in judged},
            "notes": judge.info.get("notes", {}),
        },
    }


def _no_judged_message(judge: Judge, min_accuracy: float) -> str:
    best = max((a for a in judge.accuracy.values() if a is not None), default=None)
    return (
        f"the judge reaches balanced accuracy >= {min_accuracy:.2f} on no attribute (best: "
        f"{'n/a' if best is None else f'{best:.3f}'}), so no edit can be judged: train the "
        "judge longer or on more data"
    )


def _reconstruction(
    vae: Any,
    cache: PreparedCache,
    judge: Judge,
    ev: _Split,
    judged: list[str],
    n_recon: int,
    batch_size: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Mean MSE, PSNR and SSIM of D(mu) on up to ``n_recon`` faces, and for the prior step the
    faces picked (``pick``, rows of ``ev``) with the judge's verdicts on them and on D(mu)."""
    rng = np.random.default_rng([seed, 1])
    pick = np.sort(rng.permutation(ev.idx.size)[: min(n_recon, ev.idx.size)])
    jcols = [judge.names.index(n) for n in judged]
    sums = {"mse": 0.0, "psnr": 0.0, "ssim": 0.0}
    real_dec, recon_dec = [], []
    for k in range(0, pick.size, batch_size):
        rows = pick[k : k + batch_size]
        x = cache.batch(ev.idx[rows]).to(vae.device)
        xr = _decode(vae, torch.from_numpy(ev.z[rows]))
        sums["mse"] += float((xr - x).square().flatten(1).mean(1).sum())
        sums["psnr"] += float(psnr(xr, x).sum())
        sums["ssim"] += float(ssim(xr, x).sum())
        if jcols:
            real_dec.append(judge.decide(x)[:, jcols].cpu())
            recon_dec.append(judge.decide(xr)[:, jcols].cpu())
    n_rec = max(pick.size, 1)
    rec = {"n": int(pick.size), **{k: v / n_rec for k, v in sums.items()}}
    return rec, {"pick": pick, "real": real_dec, "reconstructed": recon_dec}


def _prior_rates(
    vae: Any,
    judge: Judge,
    ev: _Split,
    names: list[str],
    judged: list[str],
    real: dict[str, Any],
    n_samples: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Each judged attribute's rate in the labels, and as judged on real faces, on their
    reconstructions and on ``n_samples`` prior samples z ~ N(0, I)."""
    jcols = [judge.names.index(n) for n in judged]
    gen = torch.Generator().manual_seed(seed)
    sample_dec = []
    for k in range(0, n_samples, batch_size):
        m = min(batch_size, n_samples - k)
        z = torch.randn(m, vae.config.latent_dim, generator=gen)
        sample_dec.append(judge.decide(_decode(vae, z))[:, jcols].cpu())
    pick = real["pick"]
    label_rate = ev.labels[pick][:, [names.index(n) for n in judged]].mean(0)
    real_rate = _rates(torch.cat(real["real"]))
    recon_rate = _rates(torch.cat(real["reconstructed"]))
    samp_rate = _rates(torch.cat(sample_dec)) if sample_dec else [None] * len(judged)
    return {
        "n_samples": n_samples,
        "n_real": int(pick.size),
        "rates": {
            n: {
                "labels": float(label_rate[i]),
                "real": real_rate[i],
                "reconstructed": recon_rate[i],
                "samples": samp_rate[i],
            }
            for i, n in enumerate(judged)
        },
    }


def _choose_targets(
    judge: Judge,
    names: list[str],
    judged: list[str],
    y_train: np.ndarray,
    attributes: Sequence[str] | None,
    condition_default: str,
    methods: list[str],
    min_accuracy: float,
) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The attributes to edit (the judged ones, or those asked for: all must be judged), the
    ones left out with why, and each target's condition for the ``conditional`` method."""
    pos = y_train.sum(0)
    usable = (pos > 0) & (pos < y_train.shape[0])
    if attributes is None:
        targets = list(judged)
    else:
        targets = list(dict.fromkeys(names[_resolve(a, names, "attributes")] for a in attributes))
        unjudged = [a for a in targets if a not in judged]
        if unjudged:
            acc = ", ".join(
                f"{a} {'n/a' if judge.accuracy.get(a) is None else judge.accuracy[a]}"
                for a in unjudged
            )
            raise DataError(
                f"the judge is not accurate enough (balanced accuracy < {min_accuracy:.2f}) on "
                f"{acc}: an edit success measured with it would mean little; judged attributes "
                f"are {', '.join(judged)}"
            )
    skipped: dict[str, str] = {}
    for a in list(targets):
        if not usable[names.index(a)]:
            skipped[a] = "one class only in the train split: no vector"
            targets.remove(a)
    r = _correlations(y_train)
    conditions: dict[str, str] = {}
    for a in targets:
        t = names.index(a)
        if (
            condition_default in names
            and condition_default != a
            and usable[names.index(condition_default)]
        ):
            conditions[a] = condition_default
        else:
            k = _top_confound(r, t, usable)
            if k is not None:
                conditions[a] = names[k]
    if "conditional" in methods:
        for a in [a for a in targets if a not in conditions]:
            skipped[a] = "no other usable label to condition on"
            targets.remove(a)
    return targets, skipped, conditions


def _fit_vectors(
    vae: Any,
    methods: list[str],
    targets: list[str],
    conditions: dict[str, str],
    names: list[str],
    tr: _Split,
    ev: _Split,
) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Each method's vector per target, fitted on train, and their quality on the evaluated
    split (held-out AUC, norms, cosines) for the report."""
    vectors: dict[str, dict[str, np.ndarray]] = {}
    quality: dict[str, Any] = {}
    for method in methods if targets else []:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small-class warnings: counts are in the report
            vectors[method] = _fit_method(vae, method, tr.z, tr.labels, names, targets, conditions)
        matrix = np.stack([vectors[method][a] for a in targets])
        rep = quality_report(matrix, targets, ev.z, ev.labels, names, train_labels=tr.labels)
        quality[method] = {
            "names": targets,
            "auc": {a: _num(v) for a, v in zip(targets, rep.auc)},
            "norms": {a: _num(v) for a, v in zip(targets, rep.norms)},
            "cosine": [[_num(c) for c in row] for row in rep.cosine],
        }
    return vectors, quality


def _run_edits(
    vae, judge, cache, ev, names, judged, r, conditions, synth, vectors, methods, strengths,
    targets, n_faces, batch_size, seed, progress,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """Per target: pick the faces to add it to and remove it from, edit them at each strength
    with each method (:func:`_edit_attribute`), and draw the example faces."""
    jcols = [judge.names.index(n) for n in judged]
    jpos = {n: i for i, n in enumerate(judged)}
    plan = []
    for a in targets:
        t = names.index(a)
        frng = np.random.default_rng([seed, 2, t])
        add = np.flatnonzero(ev.labels[:, t] == 0)
        rem = np.flatnonzero(ev.labels[:, t] == 1)
        add = np.sort(frng.permutation(add)[:n_faces])
        rem = np.sort(frng.permutation(rem)[:n_faces])
        plan.append((a, add, rem))
    total = sum(len(methods) * len(strengths) * (add.size + rem.size) for _, add, rem in plan)
    edits: dict[str, Any] = {}
    examples: dict[str, Any] = {}
    bar = tqdm(total=total, desc="edits", unit="img", disable=not progress, leave=False)
    with bar:
        for a, add, rem in plan:
            edits[a] = _edit_attribute(
                vae, judge, jcols, jpos, a, names, judged, r, conditions, synth, vectors,
                methods, strengths, ev.z, add, rem, batch_size, bar,
            )  # fmt: skip
            examples[a] = _examples(
                vae, cache, ev.idx, ev.z, a, add, rem, vectors, methods, strengths, edits[a]
            )
    return edits, examples


def _summary(edits: dict[str, Any], methods: list[str]) -> list[dict[str, Any]]:
    """One row per (attribute, method, direction): the strength for 90% and what it costs."""
    return [
        {
            "attribute": a,
            "method": m,
            "direction": d,
            "strength_90": e["methods"][m][d]["strength_90"],
            "leakage_at_90": e["methods"][m][d]["leakage_at_90"],
            "ssim_at_90": e["methods"][m][d]["ssim_at_90"],
        }
        for a, e in edits.items()
        for m in methods
        for d in ("add", "remove")
        if e["methods"][m][d] is not None
    ]


def _calibrated_edits(
    vae, judge, cache, run, common, names, judged, targets, vectors, methods, blends,
    z_eval, eval_idx, y_eval, z_train, y_train, split, n_faces, seed, progress, groups=None,
    holds=True,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Calibrate each method on the valid split, then add and remove every target at +/-1 on
    the evaluated split, per blend. The labels of exclusive ``groups`` (default: the hair
    colours where the labels have them) get each method's swaps, as ``conceptvae vectors``
    fits them (:func:`conceptvae.vectors.fit_swaps`), and with ``holds`` each method's
    vectors their holds (:func:`conceptvae.hold.choose_holds`)."""
    from attributes.bank import VectorBank
    from conceptvae.calibration import calibrate, measure_edits
    from conceptvae.calibration import occluded as hidden_by
    from conceptvae.hold import Readers, choose_holds
    from conceptvae.vectors import bank_calibration, calibrate_swaps, fit_swaps, resolve_groups

    if split == "valid" or cache.split("valid").size == 0:
        return {"note": "no valid split besides the evaluated one to calibrate on"}, []
    v_idx, z_v = split_latents(vae, cache, "valid", run, **common)
    y_v = np.asarray(cache.labels[v_idx])
    hidden = hidden_by(judge, cache.batch, v_idx, y_v, names, judged)
    out: dict[str, Any] = {a: {"hidden": hidden.get(a, []), "methods": {}} for a in targets}
    readers = Readers.fit(z_train, y_train, names) if holds else None
    found = [g for g in resolve_groups(groups, y_train, names) if set(g) & set(targets)]
    # the swaps themselves do not depend on the method: calibrated once, kept per method
    shared = found and calibrate_swaps(
        vae, judge, cache, names, v_idx, z_v, y_v, z_train, y_train, found, set(targets),
        n_faces=n_faces, progress=False,
    )  # fmt: skip
    for m in methods:
        cal = calibrate(
            vae, judge, {a: vectors[m][a] for a in targets}, faces=cache.batch,
            held_idx=v_idx, held_z=z_v, held_labels=y_v, names=names, train_z=z_train,
            train_labels=y_train, n_faces=n_faces, seed=seed, progress=progress,
        )  # fmt: skip
        if found:
            meta = {"calibration": cal["calibration"], "removal_scale": cal["removal_scale"]}
            bank = VectorBank(cal["vectors"], metadata=meta, footprints=cal["footprints"])
            bank = fit_swaps(vae, bank, judge, cache, names, v_idx, z_v, y_v, z_train, y_train,
                             found, calibrated=shared)  # fmt: skip
            cal = {**cal, **bank_calibration(bank)}
        if readers is not None:  # as conceptvae vectors chooses them, on the valid split
            cal["calibration"] = choose_holds(
                vae, judge, cal, readers, faces=cache.batch, held_idx=v_idx, held_z=z_v,
                held_labels=y_v, names=names, train_labels=y_train, n_faces=n_faces,
                seed=seed, progress=progress,
            )  # fmt: skip
            cal["readers"] = readers
        for a in targets:
            res = measure_edits(
                vae, judge, cal, a, faces=cache.batch, idx=eval_idx, z=z_eval, labels=y_eval,
                names=names, train_labels=y_train, judged=judged, hidden=hidden.get(a, []),
                blends=blends, n_faces=n_faces, seed=seed,
            )  # fmt: skip
            rec = cal["calibration"][a]
            res["calibration"] = {
                k: rec.get(k) for k in ("scale", "unit", "footprint_area", "footprint_peak")
            }
            res["calibration"]["removal_scale"] = cal["removal_scale"][a]
            if rec.get("swaps"):  # each rival's swap: tried, kept or not
                res["calibration"]["swaps"] = {
                    r: {k: v for k, v in t.items() if k != "add"}
                    | {
                        "success_at_1": (t.get("add") or {}).get("success_at_1"),
                        "leakage_at_1": (t.get("add") or {}).get("leakage_at_1"),
                    }
                    for r, t in rec["swaps"].items()
                }
            for d in ("add", "remove"):
                r = rec.get(d)
                if r is not None:
                    res["calibration"][d] = {k: v for k, v in r.items() if k != "curve"}
            out[a]["methods"][m] = res
    return out, _calibrated_summary(out, targets, methods)


def _calibrated_summary(
    out: dict[str, Any], targets: list[str], methods: list[str]
) -> list[dict[str, Any]]:
    """Per attribute and direction, the best method with the ``local`` blend: one that works
    (success and leakage goals met) with the fewest flips, else the best success - leakage
    (:func:`conceptvae.calibration.summarize`)."""
    from conceptvae.calibration import summarize

    return summarize({a: out[a] for a in targets}, methods)


def _num(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def _edit_attribute(
    vae, judge, jcols, jpos, a, names, judged, r, conditions, synth, vectors,
    methods, strengths, z_eval, add, rem, batch_size, bar,
) -> dict[str, Any]:  # fmt: skip
    """Success, leakage and preservation curves of every method for attribute ``a``."""
    t = names.index(a)
    others = [n for n in judged if n != a]
    corr = {n: float(r[t, names.index(n)]) for n in others}
    independent = [n for n in others if abs(corr[n]) < CORRELATED]
    identity = None
    if synth:
        identity = [n for n in independent if n in SYNTH_IDENTITY_TRAITS]
    cols = {
        "target": jpos[a],
        "others": [jpos[n] for n in others],
        "identity": [jpos[n] for n in identity or []],
    }
    vec = {m: torch.from_numpy(vectors[m][a]).float() for m in methods}
    acc, base_hit = _accumulate_edits(
        vae, judge, jcols, cols, vec, methods, strengths, z_eval, add, rem, batch_size, bar
    )
    counts = (add.size, rem.size)
    out: dict[str, Any] = {
        "condition": conditions.get(a) if "conditional" in methods else None,
        "n_add": int(add.size),
        "n_remove": int(rem.size),
        "correlation": corr,
        "independent": independent,
        "identity_traits": identity,
        "baseline": {
            "add": base_hit[0] / counts[0] if counts[0] else None,
            "remove": base_hit[1] / counts[1] if counts[1] else None,
        },
        "methods": {},
    }
    for m in methods:
        out["methods"][m] = {
            direction: None
            if counts[d] == 0
            else _curves(
                acc[m],
                d,
                counts[d],
                strengths,
                others,
                independent,
                bool(cols["identity"]),
                out["baseline"][direction],
            )  # fmt: skip
            for d, direction in enumerate(("add", "remove"))
        }
    return out


def _accumulate_edits(
    vae, judge, jcols, cols, vec, methods, strengths, z_eval, add, rem, batch_size, bar
) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:  # fmt: skip
    """Edit the ``add`` faces (+s) and ``rem`` faces (-s) at each strength with each method,
    and sum per (strength, direction): target hits, flips of each other attribute, SSIM to
    D(mu), and faces whose identity traits all stay. Also the hits of D(mu) itself (2,)."""
    rows = np.concatenate([add, rem])
    sign = torch.cat([torch.ones(add.size), -torch.ones(rem.size)])
    is_add = sign > 0
    n_s, ta, oth_cols, id_cols = len(strengths), cols["target"], cols["others"], cols["identity"]
    acc = {
        m: {
            "hit": np.zeros((n_s, 2)),
            "flip": np.zeros((n_s, 2, len(oth_cols))),
            "ssim": np.zeros((n_s, 2)),
            "kept": np.zeros((n_s, 2)),
        }
        for m in methods
    }
    base_hit = np.zeros(2)
    for k in range(0, rows.size, batch_size):
        sel = rows[k : k + batch_size]
        sg = sign[k : k + batch_size]
        ad = is_add[k : k + batch_size]
        z0 = torch.from_numpy(z_eval[sel]).float()
        base = _decode(vae, z0)
        dec0 = judge.decide(base)[:, jcols].cpu()
        base_hit[0] += float(dec0[ad, ta].sum())
        base_hit[1] += float((~dec0[~ad, ta]).sum())
        for m in methods:
            for i, s in enumerate(strengths):
                img = _decode(vae, z0 + (sg * s)[:, None] * vec[m][None])
                dec = judge.decide(img)[:, jcols].cpu()
                sim = ssim(img, base).cpu().double().numpy()
                flips = (dec != dec0).double().numpy()
                for d, rows_d in ((0, ad), (1, ~ad)):
                    if not rows_d.any():
                        continue
                    rd = rows_d.numpy()
                    hit = dec[rows_d, ta] if d == 0 else ~dec[rows_d, ta]
                    acc[m]["hit"][i, d] += float(hit.sum())
                    acc[m]["flip"][i, d] += flips[rd][:, oth_cols].sum(0)
                    acc[m]["ssim"][i, d] += sim[rd].sum()
                    if id_cols:
                        kept = (flips[rd][:, id_cols] == 0).all(1)
                        acc[m]["kept"][i, d] += kept.sum()
                bar.update(sel.size)
    return acc, base_hit


def _curves(
    acc: dict[str, np.ndarray],
    d: int,
    n: int,
    strengths: list[float],
    others: list[str],
    independent: list[str],
    identity: bool,
    baseline: float,
) -> dict[str, Any]:
    """One method's curves over strength in direction ``d`` (0 add, 1 remove) from its sums
    over ``n`` faces, and their values at the strength for 90% success."""
    n_s = len(strengths)
    success = [float(v) for v in acc["hit"][:, d] / n]
    flip = acc["flip"][:, d] / n  # (S, others)
    per_other = {o: [float(v) for v in flip[:, j]] for j, o in enumerate(others)}
    ind = [others.index(o) for o in independent]
    leak_mean = [float(v) for v in flip[:, ind].mean(1)] if ind else [None] * n_s
    leak_sum = [float(v) for v in flip[:, ind].sum(1)] if ind else [None] * n_s
    sim = [float(v) for v in acc["ssim"][:, d] / n]
    kept = [float(v) for v in acc["kept"][:, d] / n] if identity else None
    s90 = strength_for(strengths, success, baseline)
    return {
        "success": success,
        "leakage_mean": leak_mean,
        "leakage_sum": leak_sum,
        "leakage": per_other,
        "ssim": sim,
        "identity_kept": kept,
        "strength_90": s90,
        "leakage_at_90": _interp(strengths, leak_mean, s90, 0.0),
        "leakage_sum_at_90": _interp(strengths, leak_sum, s90, 0.0),
        "ssim_at_90": _interp(strengths, sim, s90, 1.0),
        "identity_kept_at_90": None if kept is None else _interp(strengths, kept, s90, 1.0),
        "leakage_by_attribute_at_90": None
        if s90 is None
        else {o: _interp(strengths, v, s90, 0.0) for o, v in per_other.items()},
    }


def _examples(
    vae, cache, eval_idx, z_eval, a, add, rem, vectors, methods, strengths, edits
) -> dict[str, Any]:
    """A few faces per direction: the input, D(mu), and each method at the strength it needs for
    90% success (the largest strength measured where it never gets there)."""
    rows, labels, signs = [], [], []
    for direction, faces, sg in (("add", add, 1.0), ("remove", rem, -1.0)):
        for i, f in enumerate(faces[:EXAMPLE_FACES]):
            rows.append(f)
            labels.append(f"{'+' if sg > 0 else '-'}{a} {i + 1}")
            signs.append((direction, sg))
    if not rows:
        return {}
    rows = np.asarray(rows)
    x = cache.batch(eval_idx[rows])
    z0 = torch.from_numpy(z_eval[rows]).float()
    cols = [x, _decode(vae, z0).cpu()]
    col_labels = ["input", "D(mu)"]
    for m in methods:
        zs = []
        used = {}
        for (direction, sg), zi in zip(signs, z0):
            res = edits["methods"][m][direction]
            s = res["strength_90"] if res and res["strength_90"] is not None else None
            if s is None:
                s = strengths[-1]
                used[direction] = f"{s:g}!"
            else:
                used[direction] = f"{s:.2g}"
            zs.append(zi + sg * s * torch.from_numpy(vectors[m][a]).float())
        cols.append(_decode(vae, torch.stack(zs)).cpu())
        col_labels.append(f"{m} +{used.get('add', '-')}/-{used.get('remove', '-')}")
    grid = torch.stack(cols, 1)  # (R, C, 3, S, S)
    return {
        "images": _to_uint8(grid),
        "row_labels": labels,
        "col_labels": col_labels,
        "title": f"{a}: each method at its 90% strength (! = never reached: largest strength)",
    }

"""What a strength means: footprints, edits in the crop, and strengths calibrated with a judge.

A concept vector fitted from labels has no natural length: the mean difference, a balanced
difference and a classifier direction differ in length, and the strength that makes an attribute
show differs from one attribute to the next (from under 1 to over 3 on the mean-difference
scale). This module gives every vector one scale:

    strength 1 = the attribute is there, clearly: the smallest step at which at least
    ``CALIBRATION_TARGET`` (98%) of held-out faces without it are judged to have it, edited as
    ``conceptvae edit`` edits them (blend included, and with the footprint the edit would
    have: each step of the walk is measured with its own step's footprint, and removing with
    strength 1's); strength -1 = it is gone, clearly, from the same share of faces with it.
    Where the success curve is flat below the target, a smaller step that still reaches the
    target less ``NEAR_BEST`` is strength 1 if it gives more success less leakage
    (:func:`traded_strength`).

``calibrate`` measures this with the attribute judge (:mod:`conceptvae.evaluate`) on the valid
split, which neither the vectors nor the judge's weights were fitted on, and returns the vectors
rescaled (a bank's removal scale holds the ratio of the removing step to the adding step) with a
record of the strengths reaching 90% and 95% and the leakage there. Without a judge, or for an
attribute the judge cannot see, :func:`latent_scale` sets a documented scale from latent
statistics alone and the vector is marked uncalibrated.

**Footprints.** A vector's footprint is the mean absolute change per pixel (over faces and
channels) of decoding ``z + v`` instead of ``z``: where on the face the vector acts. The ``local``
blend uses it: inside the footprint the edited face is the decoded one (so a sharp smile or
fringe of the photo cannot survive its removal), outside it the photo's own pixels stay (so a
smile does not repaint the hair); in between it fades. :func:`crop_edit` is that edit on aligned
crops, the same arithmetic :class:`~conceptvae.edit.EditPipeline` does in the photo.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import torch

from attributes.estimators import IMPLIED_SUPPORT, _correlations, implied_by
from conceptvae.hold import EditRule, redrawn, rule_steps

BLENDS = ("local", "residual", "replace")  # the blends an edit can be measured with in a crop
# strength 1: this share of held-out faces judged as wanted. 98%, not 97%: calibrating on 200
# faces picks the first noisy crossing, so the target needs a margin over the 95% goal; on the
# shipped bank's valid curves, resampling them says 97% leaves a 5.6% chance per vector of truly
# succeeding on fewer than 95% of faces, 98% a 1.3% chance, for 6% more strength on average
CALIBRATION_TARGET = 0.98
REPORTED_TARGETS = (0.90, 0.95)
# latent steps tried, in units of the vector as fitted; the search stops once the target holds
CALIBRATION_GRID = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.5, 8.0)
LATENT_SCALE = 1.5  # uncalibrated: strength 1 = 1.5 x the class-mean difference along v
CORRELATED = 0.3  # other labels with |r| >= this to the target may rightly change with it
FOOTPRINT_LEVEL = 0.5  # a pixel is fully inside the footprint at this share of its peak change
FOOTPRINT_FACES = 256
# how much of the decoded face the local blend shows inside the footprint (1: all of it, as a
# removal needs to erase a sharp smile; 0: only the change, over the photo's own detail). Each
# vector's direction gets the least of these that still reaches the calibration target on the
# held-out split, so an edit redraws no more of the photo than it needs to
REDRAW_GRID = (0.0, 0.25, 0.5, 0.75)
NO_EFFECT = 2.0 / 255  # a footprint whose peak change is below this: the vector does nothing
# a vector that never reaches the target gets as strength 1 the least step reaching its best
# success less this: on 200 faces, steps within a point or two of the best differ by noise,
# while leakage keeps rising with the step; and on a flat curve, a smaller step reaching the
# target less this may be strength 1 (``traded_strength``)
NEAR_BEST = 0.02


# ----------------------------------------------------------------------------- footprints


@torch.inference_mode()
def footprint(
    vae: Any,
    z: np.ndarray | torch.Tensor,
    vector: Any,
    *,
    batch_size: int = 256,
    base: torch.Tensor | None = None,
):
    """(S, S) float32: mean |D(z + vector) - D(z)| over the faces ``z`` (N, D) and channels.
    ``base``: D(z) when already decoded (on ``vae.device``), to measure several vectors on
    the same faces without decoding them again."""
    z = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    v = torch.as_tensor(np.asarray(vector), dtype=torch.float32).to(vae.device)
    total = None
    for k in range(0, z.shape[0], batch_size):
        zb = z[k : k + batch_size].to(vae.device)
        d0 = _decode(vae, zb) if base is None else base[k : k + batch_size]
        d = (_decode(vae, zb + v) - d0).abs().mean(1).sum(0)  # (S, S)
        total = d if total is None else total + d
    return (total / max(z.shape[0], 1)).cpu().numpy().astype(np.float32)


def footprint_weight(fp: np.ndarray | torch.Tensor, level: float = FOOTPRINT_LEVEL) -> torch.Tensor:
    """(S, S) float32 in [0, 1] from a footprint: 1 where the change reaches ``level`` of its
    peak (the 99th percentile), fading smoothly to 0 where nothing changes, and to 0 on the
    crop's outermost pixels (so the crop's edge never shows in a photo)."""
    m = torch.tensor(np.asarray(fp, dtype=np.float32))
    peak = float(torch.quantile(m.flatten(), 0.99))
    if peak <= 0:
        return torch.zeros_like(m)
    t = (m / (level * peak)).clamp(0, 1)
    t = t * t * (3 - 2 * t)
    t = torch.nn.functional.avg_pool2d(
        torch.nn.functional.pad(t[None, None], (1, 1, 1, 1), mode="replicate"), 3, 1
    )[0, 0]
    t[0, :] = t[-1, :] = 0
    t[:, 0] = t[:, -1] = 0
    return t


def combined_weight(weights: Sequence[tuple[float, torch.Tensor]]) -> torch.Tensor | None:
    """The footprint weight of an expression: the union (max) of its terms' weights, each
    scaled by min(1, |coefficient|). None when there is no term."""
    out = None
    for coef, w in weights:
        w = w * min(1.0, abs(float(coef)))
        out = w if out is None else torch.maximum(out, w)
    return out


def redraw_of(calibration: dict[str, Any], name: str, direction: str) -> float:
    """The redraw chosen for ``name``'s ``direction`` (``"add"``/``"remove"``) in a bank's
    calibration records (its metadata's ``"calibration"``); 1 (redraw fully) when none was."""
    record = (calibration.get(name) or {}).get(direction) or {}
    return float(record.get("redraw", 1.0))


def swap_redraw(calibration: dict[str, Any], name: str, rival: str) -> float:
    """The redraw chosen for the swap adding ``name`` to a face showing ``rival``
    (:func:`conceptvae.vectors.fit_swaps`); 1 when none was."""
    record = ((calibration.get(name) or {}).get("swaps") or {}).get(rival) or {}
    return float((record.get("add") or {}).get("redraw", 1.0))


def redraw_weight(terms: Sequence[tuple[float, float, torch.Tensor]]) -> torch.Tensor | None:
    """The local blend's redraw map ``r`` of an expression: the max over its terms of
    ``redraw * w * min(1, |coefficient|)`` for terms ``(coefficient, redraw, w)``; with one
    term of |coefficient| >= 1 that is ``redraw * w``, what a number ``redraw`` means to
    :func:`crop_edit`. None when there is no term."""
    out = None
    for coef, g, w in terms:
        r = w * (min(1.0, abs(float(coef))) * float(g))
        out = r if out is None else torch.maximum(out, r)
    return out


# ----------------------------------------------------------------------------- the edit


def crop_edit(
    x: torch.Tensor,
    d0: torch.Tensor,
    d1: torch.Tensor,
    blend: str,
    *,
    weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    redraw: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """The edited crops (B, 3, S, S) in [0, 1] as ``conceptvae edit`` makes them.

    ``x``: the faces (B, 3, S, S); ``d0``/``d1``: D(z) and D(z + step); ``weight``: the edit's
    footprint weight (S, S) (``local``); ``mask``: the face mask (S, S) (``residual``,
    ``replace``; None: the whole crop).

    - ``residual``: x + mask * (d1 - d0): the photo keeps its own detail.
    - ``replace``: x + mask * (d1 - x): the decoded face itself.
    - ``local``: x + w * ((d1 - d0) + r * (d0 - x)): inside the footprint the decoded face,
      outside it the photo, the residual change in between. ``redraw`` sets ``r``: a number
      ``g`` means ``r = g * w`` (1, the default: the decoded face where ``w`` is 1; 0: the
      change alone, over the photo's own detail); an (S, S) map is ``r`` itself
      (:func:`redraw_weight` for an expression of several vectors).
    """
    if blend == "local":
        if weight is None:
            raise ValueError("the local blend needs the edit's footprint weight")
        w = weight.to(x.device)
        r = redraw.to(x.device) if isinstance(redraw, torch.Tensor) else float(redraw) * w
        out = x + w * ((d1 - d0) + r * (d0 - x))
    elif blend == "residual":
        m = 1.0 if mask is None else mask.to(x.device)
        out = x + m * (d1 - d0)
    elif blend == "replace":
        m = 1.0 if mask is None else mask.to(x.device)
        out = x + m * (d1 - x)
    else:
        raise ValueError(f"unknown blend {blend!r}: use one of {', '.join(BLENDS)}")
    return out.clamp(0, 1)


# ----------------------------------------------------------------------------- scales


def latent_scale(z: np.ndarray, y: np.ndarray, vector: np.ndarray) -> float:
    """The uncalibrated scale: the factor making strength 1 a step of ``LATENT_SCALE`` times
    the class-mean difference of the latents ``z`` (N, D) projected on ``vector``'s direction,
    for 0/1 labels ``y`` (N,). A vector as long as that difference (the mean method) gets
    ``LATENT_SCALE``; a shorter one (balanced, classifier) more."""
    v = np.asarray(vector, dtype=np.float64)
    norm = float(np.linalg.norm(v))
    y = np.asarray(y).astype(bool)
    if norm == 0 or y.all() or not y.any():
        return 1.0
    p = np.asarray(z, dtype=np.float64) @ (v / norm)
    gap = float(p[y].mean() - p[~y].mean())
    if not math.isfinite(gap) or gap <= 0:
        return 1.0
    return LATENT_SCALE * gap / norm


def strength_for(
    strengths: Sequence[float], success: Sequence[float], baseline: float, target: float = 0.90
) -> float | None:
    """The smallest strength where the success curve ``(0, baseline), (s_i, success_i)``
    first reaches ``target``, by linear interpolation; None if it never does."""
    xs = [0.0, *map(float, strengths)]
    ys = [float(baseline), *map(float, success)]
    if ys[0] >= target:
        return 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= target:
            return x0 + (target - y0) / (y1 - y0) * (x1 - x0)
    return None


def best_strength(
    strengths: Sequence[float], success: Sequence[float], baseline: float, within: float = NEAR_BEST
) -> float:
    """For a curve that never reaches the target: the least strength (interpolated as
    ``strength_for`` does) reaching the best success measured less ``within``; the step of the
    best success itself when the unedited faces already come that close (the vector does
    nothing)."""
    best = int(np.argmax(success))
    s = strength_for(strengths, success, baseline, float(success[best]) - within)
    return float(strengths[best]) if s is None or s <= 0 else s


def traded_strength(
    strengths: Sequence[float],
    success: Sequence[float],
    leakage: Sequence[float],
    baseline: float,
    at: float,
    floor: float,
) -> float:
    """``at`` (the step reaching the target, or the least near the best), or a smaller step
    of the curve that still reaches ``floor`` and gives more success less leakage: on a flat
    curve, the last few faces the target asks for can cost many times the step, and every
    face pays for it in leakage. Of equal steps the least wins."""
    best = read_at(strengths, success, at, baseline) - read_at(strengths, leakage, at, 0.0)
    out = at
    for s, su, le in zip(strengths, success, leakage):
        if s < at and su >= floor and su - le > best + 1e-9:
            best, out = su - le, float(s)
    return out


def read_at(strengths: Sequence[float], values: Sequence[float], at: float | None, at_zero: float):
    """``values`` over ``strengths`` (``at_zero`` at 0) read at ``at`` by linear
    interpolation; None when ``at`` is None."""
    if at is None:
        return None
    return float(np.interp(at, [0.0, *map(float, strengths)], [at_zero, *map(float, values)]))


# ----------------------------------------------------------------------------- measuring


@torch.inference_mode()
def _decode(vae: Any, z: torch.Tensor) -> torch.Tensor:
    return vae.decode(z.to(vae.device)).float().clamp(0, 1)


class EditProbe:
    """Edits a fixed set of faces along a direction and asks the judge about them.

    ``faces`` (B, 3, S, S) in [0, 1] and their posterior means ``z`` (B, D); ``target`` the
    judge's column of the attribute, ``others`` the columns whose flips count as leakage;
    ``adding``: success means judged positive (else judged negative).
    """

    def __init__(
        self,
        vae: Any,
        judge: Any,
        faces: torch.Tensor,
        z: torch.Tensor,
        *,
        target: int,
        others: Sequence[int],
        adding: bool,
        blend: str,
        mask: torch.Tensor | None = None,
        batch_size: int = 256,
    ) -> None:
        self.vae, self.judge = vae, judge
        self.faces, self.z = faces, z
        self.target, self.others, self.adding = target, list(others), adding
        self.blend, self.mask, self.batch_size = blend, mask, batch_size
        self.rows: np.ndarray | None = None  # the held-out rows these faces are, when drawn
        self.d0 = torch.cat(
            [_decode(vae, z[k : k + batch_size]).cpu() for k in range(0, z.shape[0], batch_size)]
        )
        self.before = judge.decide(faces).cpu()
        self.baseline = self._success(self.before)
        self._last: tuple[torch.Tensor, list[torch.Tensor]] | None = None

    def _decoded(self, step: torch.Tensor) -> list[torch.Tensor]:
        """D(z + step) per batch (``step`` (D,) or one per face (B, D)); the last step's are
        kept, so trying several redraws of one step (:func:`_choose_redraw`) decodes it once."""
        if self._last is None or not torch.equal(self._last[0], step):
            bs = self.batch_size
            # one step for every face (D,), or each face its own (B, D)
            d1 = [_decode(self.vae, self.z[k : k + bs] + (step[None] if step.dim() == 1
                                                          else step[k : k + bs])).cpu()
                  for k in range(0, self.z.shape[0], bs)]  # fmt: skip
            self._last = (step.clone(), d1)
        return self._last[1]

    def drawn(self, step: torch.Tensor) -> torch.Tensor:
        """``D(z + step)`` of every face (as :meth:`at` decodes it, once per step)."""
        return torch.cat(self._decoded(step))

    def _success(self, verdicts: torch.Tensor) -> float:
        hit = verdicts[:, self.target] if self.adding else ~verdicts[:, self.target]
        return float(hit.float().mean()) if hit.numel() else float("nan")

    @torch.inference_mode()
    def at(
        self, step: torch.Tensor, weight: torch.Tensor | None = None, redraw: Any = 1.0
    ) -> dict[str, Any]:
        """Success, leakage (mean flip rate over ``others``, and per other), SSIM to the
        unedited faces of the edit ``z + step`` (``step`` (D,), or (B, D): each face its own;
        ``redraw``: :func:`crop_edit`'s; ``weight`` and ``redraw`` may be each face's own,
        (B, 1, S, S), as :func:`_swapped` gives them)."""
        from conceptvae.evaluate import ssim

        n = self.z.shape[0]

        def rows(x: Any, sl: slice) -> Any:
            per_face = isinstance(x, torch.Tensor) and x.dim() == 4 and x.shape[0] == n
            return x[sl] if per_face else x

        verdicts, sims = [], []
        for k, d1 in zip(range(0, n, self.batch_size), self._decoded(step)):
            sl = slice(k, k + self.batch_size)
            img = crop_edit(self.faces[sl], self.d0[sl], d1, self.blend, weight=rows(weight, sl),
                            mask=self.mask, redraw=rows(redraw, sl))  # fmt: skip
            verdicts.append(self.judge.decide(img).cpu())
            sims.append(ssim(img, self.faces[sl]).cpu())
        v = torch.cat(verdicts)
        flips = (v[:, self.others] != self.before[:, self.others]).float().mean(0)
        return {
            "success": self._success(v),
            "leakage": float(flips.mean()) if flips.numel() else 0.0,
            "flips": flips.tolist(),
            "ssim": float(torch.cat(sims).mean()),
        }


def independent_columns(
    judge: Any, names: Sequence[str], train_labels: np.ndarray, attribute: str, judged: list[str]
) -> list[int]:
    """The judge's columns of judged attributes whose labels correlate with ``attribute`` by
    |r| < ``CORRELATED`` on the train split: the ones an edit should leave alone."""
    r = _correlations(np.asarray(train_labels))
    t = list(names).index(attribute)
    return [
        judge.names.index(n)
        for n in judged
        if n != attribute and abs(r[t, list(names).index(n)]) < CORRELATED
    ]


# ----------------------------------------------------------------------------- calibrating


def _held_probe(
    vae: Any, judge: Any, faces: Any, held_idx: np.ndarray, held_z: np.ndarray,
    held_labels: np.ndarray, t: int, label: int, n_faces: int, rng: np.random.Generator,
    avoid: np.ndarray | None = None, **kw,
) -> EditProbe | None:  # fmt: skip
    """The probe of up to ``n_faces`` held-out faces whose label ``t`` is ``label`` (0: to add
    it, 1: to remove it), drawn from ``rng`` (which advances even when none qualify, so
    :func:`choose_redraws` replays :func:`calibrate`'s draws); None when none qualify. Rows in
    ``avoid`` are drawn last, only where too few others qualify. The probe's ``rows`` are the
    rows of ``held_idx`` it edits. ``kw``: :class:`EditProbe`'s ``target``, ``others``,
    ``blend``, ``mask``."""
    rows = rng.permutation(np.flatnonzero(held_labels[:, t] == label))
    if avoid is not None and avoid.size:
        used = np.isin(rows, avoid)
        rows = np.concatenate([rows[~used], rows[used]])
    rows = np.sort(rows[:n_faces])
    if rows.size == 0:
        return None
    x = faces(held_idx[rows])
    z = torch.from_numpy(held_z[rows]).float()
    probe = EditProbe(vae, judge, x, z, adding=label == 0, **kw)
    probe.rows = rows
    return probe


def _walk(probe: EditProbe, vector: torch.Tensor, sign: float, weight, target: float):
    """Success, leakage and SSIM along ``CALIBRATION_GRID`` until the target holds twice.
    ``weight``: the local blend's footprint weight (None for the other blends), or a function
    of the step's strength giving the weight its edit would have."""
    curve: dict[str, list[float]] = {"strength": [], "success": [], "leakage": [], "ssim": []}
    for s in CALIBRATION_GRID:
        res = probe.at(sign * s * vector, weight(s) if callable(weight) else weight)
        curve["strength"].append(s)
        for key in ("success", "leakage", "ssim"):
            curve[key].append(res[key])
        if len(curve["success"]) >= 2 and min(curve["success"][-2:]) >= target:
            break
    return curve


def _choose_redraw(probe: EditProbe, step: torch.Tensor, weight, target: float) -> dict:
    """The least redraw of ``REDRAW_GRID`` (else 1) whose edit at ``step`` (strength 1)
    succeeds as often as the full redraw does, up to ``target``; success, leakage and SSIM at
    strength 1 then are the chosen redraw's, measured on the probe's faces, and
    ``redraw_curve`` holds every redraw measured."""
    full = probe.at(step, weight, 1.0)
    need = min(target, full["success"])
    chosen, res = 1.0, full
    curve = {"redraw": [1.0], "success": [full["success"]], "leakage": [full["leakage"]]}
    for g in REDRAW_GRID:
        r = probe.at(step, weight, g)
        curve["redraw"].append(g)
        curve["success"].append(r["success"])
        curve["leakage"].append(r["leakage"])
        if r["success"] >= need:
            chosen, res = g, r
            break
    return {
        "redraw": chosen,
        "success_at_1": res["success"],
        "leakage_at_1": res["leakage"],
        "ssim_at_1": res["ssim"],
        "redraw_curve": curve,
    }


def _summary(curve: dict[str, list[float]], baseline: float, unit: float, target: float):
    """A direction's record on the calibrated scale (``unit``: the raw step of strength 1)."""
    g, succ = curve["strength"], curve["success"]
    out: dict[str, Any] = {"baseline": baseline}
    for t in (*REPORTED_TARGETS, target):
        s = strength_for(g, succ, baseline, t)
        key = f"strength_{round(100 * t)}"
        out[key] = None if s is None else s / unit
        out[f"leakage_{round(100 * t)}"] = read_at(g, curve["leakage"], s, 0.0)
    out["success_at_1"] = read_at(g, succ, unit, baseline)
    out["leakage_at_1"] = read_at(g, curve["leakage"], unit, 0.0)
    out["ssim_at_1"] = read_at(g, curve["ssim"], unit, 1.0)
    out["reached"] = out[f"strength_{round(100 * target)}"] is not None
    out["curve"] = {
        "strength": [s / unit for s in g],
        **{k: curve[k] for k in ("success", "leakage", "ssim")},
    }
    return out


def lengthened(
    strengths: Sequence[float], leakage: Sequence[float], floor: float, step: float, budget: float
) -> float:
    """How far past ``floor`` (the old step) a new ``step`` may go: the longest measured
    strength up to ``step`` before the first whose leakage exceeds the floor's (read on the
    curve) by more than ``budget``; ``step`` when none does. Without labels the judge sees
    only the attributes it still tells apart, so a step that repaints the face shows first as
    leakage into those."""
    base = read_at(strengths, leakage, floor, 0.0)
    allowed = floor
    for s in [*(g for g in strengths if floor < g < step), step]:
        if read_at(strengths, leakage, s, 0.0) > base + budget:
            return allowed
        allowed = s
    return step


def _scaled(raw: Any, unit: float) -> np.ndarray:
    """The vector at strength 1, as the bank stores it: ``raw * unit`` in float32."""
    return (np.asarray(raw, dtype=np.float64) * unit).astype(np.float32)


def calibrate(
    vae: Any,
    judge: Any,
    vectors: dict[str, np.ndarray],
    *,
    faces: Any,
    held_idx: np.ndarray,
    held_z: np.ndarray,
    held_labels: np.ndarray,
    names: Sequence[str],
    train_z: np.ndarray,
    train_labels: np.ndarray,
    blend: str = "local",
    n_faces: int = 200,
    target: float = CALIBRATION_TARGET,
    min_accuracy: float = 0.90,
    seed: int = 0,
    avoid: dict[str, dict[str, np.ndarray]] | None = None,
    least: dict[str, dict[str, float]] | None = None,
    leak_budget: float | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Put every vector on the calibrated scale.

    ``vectors``: name -> (D,) as fitted; ``faces(indices)`` -> (B, 3, S, S) images of the
    held-out split whose rows ``held_idx`` have posterior means ``held_z`` and labels
    ``held_labels`` (columns ``names``); the train split's ``train_z``/``train_labels`` give
    footprints, correlations and the uncalibrated scale. Up to ``n_faces`` held-out faces
    without (with) each attribute are edited to add (remove) it with ``blend``.

    ``avoid``: name -> direction -> held-out rows to draw only where too few others qualify
    (another calibration's ``probe_rows``, so that a vector chosen on those faces is measured
    on others). ``least``: name -> direction -> the shortest step strength 1 may take, in
    the raw vector's lengths (a recalibration without labels keeps the old strength where the
    new one would be shorter); with ``leak_budget``, a step longer than that floor is only
    as long as its leakage stays within ``leak_budget`` of the floor's (:func:`lengthened`).

    Returns ``{"vectors": name -> scaled (D,) float32, "removal_scale": name -> float,
    "footprints": name -> (S, S), "calibration": name -> record, "probe_rows": name ->
    direction -> the held-out rows edited}``. A record says ``scale``
    ("judge" or "latent"), the raw ``unit`` of strength 1, and per direction (``add``,
    ``remove``) the strengths reaching 90%, 95% and the target on the calibrated scale, the
    leakage there, success/leakage/SSIM at strength 1 and the curve measured.
    """
    from tqdm.auto import tqdm

    names = list(names)
    judged = [n for n in judge.judged(min_accuracy) if n in names]
    S = vae.config.image_size
    out: dict[str, Any] = {"vectors": {}, "removal_scale": {}, "footprints": {}, "calibration": {},
                           "probe_rows": {}}  # fmt: skip
    rng = np.random.default_rng([seed, 3])
    foot_z = train_z[np.sort(rng.permutation(train_z.shape[0])[:FOOTPRINT_FACES])]
    foot_d0 = torch.cat([_decode(vae, torch.as_tensor(foot_z[k : k + 256]).float())
                         for k in range(0, foot_z.shape[0], 256)])  # fmt: skip

    def footprint_of(vector: Any) -> np.ndarray:
        return footprint(vae, foot_z, vector, base=foot_d0)

    bar = tqdm(total=len(vectors), desc="calibrating", unit="vector", disable=not progress,
               leave=False)  # fmt: skip
    with bar:
        for name, raw in vectors.items():
            v = torch.tensor(np.asarray(raw, dtype=np.float32))  # a copy: banks load read-only
            t = names.index(name)
            record: dict[str, Any] = {"target": target, "blend": blend}
            fp1 = None  # strength 1's footprint, once known
            if name not in judged:
                acc = getattr(judge, "accuracy", {}).get(name)
                unit = latent_scale(train_z, train_labels[:, t], raw)
                record.update(
                    scale="latent",
                    unit=unit,
                    reason=(
                        f"the judge cannot see {name} (balanced accuracy "
                        f"{'n/a' if acc is None else f'{acc:.2f}'} < {min_accuracy:.2f}): "
                        f"strength 1 is {LATENT_SCALE:g} x the class-mean gap along the vector"
                    ),
                )
                removal = 1.0
            else:
                mask = None
                if blend != "local":
                    from conceptvae.data import Frame
                    from conceptvae.faces import face_mask

                    crop = getattr(vae.config, "crop", None) or 148.0
                    mask = torch.from_numpy(face_mask(S, Frame(image_size=S, crop=crop)))
                others = independent_columns(judge, names, train_labels, name, judged)
                col = judge.names.index(name)
                curves, baselines, probes, signs, units = {}, {}, {}, {}, {}
                floored: set[str] = set()  # directions held at ``least``
                capped: set[str] = set()  # directions lengthened less for ``leak_budget``
                weight: Any = None  # the other blends use the face mask
                if blend == "local":
                    # each step is measured with the footprint its edit would have if it were
                    # strength 1 (the scaled vector's, which edits use); once adding has fixed
                    # strength 1, removing is measured with that footprint
                    weight = lambda s, v=v: footprint_weight(footprint_of(s * v))  # noqa: E731
                for direction, label, sign in (("add", 0, 1.0), ("remove", 1, -1.0)):
                    probe = _held_probe(
                        vae, judge, faces, held_idx, held_z, held_labels, t, label, n_faces, rng,
                        avoid=(avoid or {}).get(name, {}).get(direction), target=col,
                        others=others, blend=blend, mask=mask,
                    )  # fmt: skip
                    if probe is None:
                        continue
                    out["probe_rows"].setdefault(name, {})[direction] = probe.rows
                    c = curves[direction] = _walk(probe, v, sign, weight, target)
                    baselines[direction] = probe.baseline
                    probes[direction], signs[direction] = probe, sign
                    s = strength_for(c["strength"], c["success"], probe.baseline, target)
                    if s is None:  # never reached: the least step near the best success
                        s = best_strength(c["strength"], c["success"], probe.baseline)
                    s = traded_strength(c["strength"], c["success"], c["leakage"],
                                        probe.baseline, s, target - NEAR_BEST)  # fmt: skip
                    floor = (least or {}).get(name, {}).get(direction, 0.0)
                    if floor > max(s, 1e-3):
                        floored.add(direction)
                    elif floor > 0 and leak_budget is not None:
                        kept = lengthened(c["strength"], c["leakage"], floor, s, leak_budget)
                        if kept < s:
                            capped.add(direction)
                            s = kept
                    units[direction] = max(s, 1e-3, floor)
                    if direction == "add" and blend == "local":
                        fp1 = footprint_of(_scaled(raw, units["add"]))
                        weight = footprint_weight(fp1)
                unit = units.get("add", units.get("remove", 1.0))
                removal = units.get("remove", unit) / unit
                record.update(scale="judge", unit=unit, judge_accuracy=judge.accuracy.get(name))
                for d, c in curves.items():
                    record[d] = _summary(c, baselines[d], units[d], target)
                    if d in floored:
                        record[d]["at_least"] = True
                    if d in capped:
                        record[d]["leak_capped"] = True
                    record[d]["n_faces"] = int(
                        min(n_faces, int((held_labels[:, t] == (d == "remove")).sum()))
                    )
            scaled = _scaled(raw, record["unit"])
            out["vectors"][name] = scaled
            out["removal_scale"][name] = float(removal)
            if fp1 is None:  # adding did not fix strength 1 (no faces without it, or no judge)
                fp1 = footprint_of(scaled)
            out["footprints"][name] = fp1
            w1 = footprint_weight(fp1)
            if record["scale"] == "judge" and blend == "local":
                # at strength +/-1, with the footprint edits use (the scaled vector's), the
                # least redraw that does as well as the full one
                for d in curves:
                    record[d].update(_choose_redraw(probes[d], signs[d] * units[d] * v, w1, target))
            record["footprint_peak"] = float(np.quantile(fp1, 0.99))
            record["footprint_area"] = float((w1 > 0.5).float().mean())
            out["calibration"][name] = record
            bar.update(1)
    return out


def edit_directions(cal: dict[str, Any], name: str) -> tuple[tuple[str, int, float], ...]:
    """``(direction, label of the faces it edits, sign and scale of the step)`` of a calibrated
    vector: adding (+1, to faces without it) and removing (-1 times its removal scale)."""
    return (("add", 0, 1.0), ("remove", 1, -float(cal["removal_scale"].get(name, 1.0))))


def choose_redraws(
    vae: Any,
    judge: Any,
    cal: dict[str, Any],
    *,
    faces: Any,
    held_idx: np.ndarray,
    held_z: np.ndarray,
    held_labels: np.ndarray,
    names: Sequence[str],
    train_labels: np.ndarray,
    n_train: int,
    n_faces: int = 200,
    min_accuracy: float = 0.90,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The redraw step of :func:`calibrate` for vectors calibrated before it existed: ``cal``
    holds the calibrated ``vectors``, ``removal_scale``, ``footprints`` and ``calibration``
    records (a bank's); each judged vector's directions get the least redraw that reaches
    what the full redraw does at strength +/-1 on the same held-out faces :func:`calibrate`
    drew (``seed``, ``n_faces``, ``n_train``: the train split's size). Strengths and vectors
    are unchanged; returns the updated records."""
    from tqdm.auto import tqdm

    names = list(names)
    judged = [n for n in judge.judged(min_accuracy) if n in names]
    rng = np.random.default_rng([seed, 3])
    rng.permutation(n_train)  # the footprint faces calibrate drew first
    records = {k: dict(v) for k, v in cal["calibration"].items()}
    todo = [n for n in cal["vectors"] if n in judged]
    for name in tqdm(todo, desc="redraw", unit="vector", disable=not progress, leave=False):
        t = names.index(name)
        v = torch.as_tensor(np.array(cal["vectors"][name], dtype=np.float32))
        weight = footprint_weight(cal["footprints"][name])
        others = independent_columns(judge, names, train_labels, name, judged)
        col = judge.names.index(name)
        for direction, label, sign in edit_directions(cal, name):
            probe = _held_probe(
                vae, judge, faces, held_idx, held_z, held_labels, t, label, n_faces, rng,
                target=col, others=others, blend="local",
            )  # fmt: skip
            if probe is None or not records[name].get(direction):
                continue
            target = float(records[name].get("target", CALIBRATION_TARGET))
            records[name][direction] = {
                **records[name][direction],
                **_choose_redraw(probe, sign * v, weight, target),
            }
    return records


def problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a calibrated vector, each with what to do (empty: nothing)."""
    out = []
    if record.get("footprint_peak", 1.0) < NO_EFFECT:
        out.append(
            f"decoding it changes almost nothing (peak change {255 * record['footprint_peak']:.1f}"
            "/255 per pixel at strength 1): the model may not draw this attribute; check its "
            "held-out AUC, label more faces or use the mean method"
        )
    if record.get("scale") == "judge":
        for d in ("add", "remove"):
            r = record.get(d)
            if r is not None and not r["reached"]:
                best = max(r["curve"]["success"]) if r["curve"]["success"] else 0.0
                # one decimal where whole percents would round up to the target (97.5% vs 98%)
                spec = ".1%" if round(100 * best) >= round(100 * record["target"]) else ".0%"
                text = (
                    f"{'adding' if d == 'add' else 'removing'} it reaches only {best:{spec}} of "
                    f"faces (target {record['target']:.0%}): strength 1 is the least step within "
                    f"{100 * NEAR_BEST:.0f} points of that; expect it to fail on some faces"
                )
                kept = {r: t for r, t in (record.get("swaps") or {}).items() if t.get("kept")}
                if d == "add" and kept:  # the faces the vector fails on may get a swap
                    got = [round(100 * t["add"]["success_at_1"]) for t in kept.values()]
                    span = f"{min(got)}%" + ("" if min(got) == max(got) else f"-{max(got)}%")
                    text += (
                        f"; faces showing {', '.join(kept)} get a swap instead, which adds it "
                        f"to {span} of them"
                    )
                out.append(text)
    return out


# ----------------------------------------------------------------------------- measuring edits

SUCCESS_GOAL = 0.95  # what "works" means in the tables: this success ...
LEAKAGE_GOAL = 0.02  # ... with at most this leakage, at strength 1
OCCLUDED_ACCURACY = 0.90  # the judge tells an attribute this well on faces with the target
# a flip is only the vector's fault where the judge can vouch for it and the data allows both
# values: an attribute the judge tells below this balanced accuracy (on valid) ...
RELIABLE_ACCURACY = 0.95
# ... or one whose value the target's new state fixes in the training labels (P(o | target) <
# IMPLIED_SUPPORT or > 1 - it: stubble implies Male, grey hair excludes brown) is not free
REASONS = ("implied", "hidden", "weak judge", "vector")


def implied(
    train_labels: np.ndarray, names: Sequence[str], attribute: str, others: Sequence[str],
    state: int, support: float = IMPLIED_SUPPORT,
) -> dict[str, float]:  # fmt: skip
    """The ``others`` whose value the target's ``state`` (1: has it, 0: lacks it) all but fixes
    in the labels: name -> P(other | target = state), below ``support`` or above ``1 -
    support`` (:func:`attributes.estimators.implied_by`). An edit to that state cannot keep
    them without leaving the data the model learned: stubble implies Male in SynthFaces
    although they correlate by r = 0.29 only."""
    names = list(names)
    found = implied_by(
        np.asarray(train_labels), names.index(attribute), [names.index(o) for o in others],
        support, state=state,
    )  # fmt: skip
    return {names[o]: ps[int(state)] for o, ps in found.items()}


def leakage_reasons(
    judge: Any, others: Sequence[str], hidden: Sequence[str], implied_by: dict[str, float],
    min_accuracy: float = RELIABLE_ACCURACY,
) -> dict[str, str]:  # fmt: skip
    """Why each of ``others`` may flip under an edit: ``implied`` by the data, ``hidden`` by the
    target from the judge, ``weak judge`` (its balanced accuracy is below ``min_accuracy``), or
    else ``vector``: a flip the vector itself is to blame for."""
    out = {}
    for o in others:
        acc = judge.accuracy.get(o)
        if o in implied_by:
            out[o] = "implied"
        elif o in set(hidden):
            out[o] = "hidden"
        elif acc is None or acc < min_accuracy:
            out[o] = "weak judge"
        else:
            out[o] = "vector"
    return out


def explain(cell: dict[str, Any], reasons: dict[str, str], detail: dict[str, str], top: int = 3):
    """The largest flips of a measured edit with their reasons, as short phrases."""
    flips = sorted(cell["flips"].items(), key=lambda kv: -kv[1])
    return [
        f"{o} {f:.0%} ({reasons.get(o, 'vector')}{detail.get(o, '')})"
        for o, f in flips[:top]
        if f >= LEAKAGE_GOAL
    ]


@torch.inference_mode()
def occluded(
    judge: Any, faces: Any, idx: np.ndarray, labels: np.ndarray, names: Sequence[str],
    judged: list[str], min_accuracy: float = OCCLUDED_ACCURACY, batch_size: int = 512,
) -> dict[str, list[str]]:  # fmt: skip
    """Per judged attribute ``t``: the other judged attributes the judge cannot tell (balanced
    accuracy < ``min_accuracy``, labels as truth) on real faces that have ``t``: what ``t``
    hides (glasses hide narrow eyes, a fringe hides the hairline). A flip of those after an
    edit that adds or removes ``t`` is not a change the judge can vouch for."""
    names = list(names)
    cols = [judge.names.index(n) for n in judged]
    verdicts = torch.cat(
        [judge.decide(faces(idx[k : k + batch_size]))[:, cols].cpu()
         for k in range(0, idx.size, batch_size)]
    ).numpy()  # fmt: skip
    lab = labels[:, [names.index(n) for n in judged]].astype(bool)
    out: dict[str, list[str]] = {}
    for i, t in enumerate(judged):
        rows = lab[:, i]
        hidden = []
        for j, o in enumerate(judged):
            if j == i:
                continue
            y, p = lab[rows, j], verdicts[rows, j]
            if y.sum() < 10 or (~y).sum() < 10:
                continue  # too few faces with t to tell
            acc = 0.5 * (p[y].mean() + (~p[~y]).mean())
            if acc < min_accuracy:
                hidden.append(o)
        out[t] = hidden
    return out


def _outside_ssim(img: torch.Tensor, x: torch.Tensor, weight: torch.Tensor | None) -> float:
    """SSIM of the edit to the face where the footprint does not reach (inside it, the edit
    is set back to the face, so only changes outside count)."""
    from conceptvae.evaluate import ssim

    if weight is None:
        return float(ssim(img, x).mean())
    inside = (weight > 0.05).to(img.dtype)
    return float(ssim(img * (1 - inside) + x * inside, x).mean())


@torch.inference_mode()
def measure_edits(
    vae: Any,
    judge: Any,
    cal: dict[str, Any],
    attribute: str,
    *,
    faces: Any,
    idx: np.ndarray,
    z: np.ndarray,
    labels: np.ndarray,
    names: Sequence[str],
    train_labels: np.ndarray,
    judged: list[str],
    hidden: Sequence[str] = (),
    blends: Sequence[str] = BLENDS,
    n_faces: int = 200,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, Any]:
    """Success, leakage and SSIM of the calibrated vector of ``attribute`` (``cal`` from
    :func:`calibrate`) at strength +1 (faces without it) and -1 (faces with it), per blend,
    on up to ``n_faces`` faces of a split (``idx``/``z``/``labels``). Leakage is given over all
    independent judged attributes (``leakage``) and without those ``hidden`` by the target
    (``leakage_visible``), and over the *free* ones only (``leakage_free``: neither implied by
    the data, nor hidden, nor weakly judged; see :func:`leakage_reasons`), with ``why``: the
    largest flips and their reasons. ``ssim_outside`` compares only where the footprint does
    not reach. ``success_interval`` is the success's 95% interval (:func:`clustered_interval`,
    with ``groups``: the person of each row of the split, whose faces tend to succeed or fail
    together) and ``design_effect`` how many faces count as one."""
    from conceptvae.data import Frame
    from conceptvae.faces import face_mask

    names = list(names)
    t = names.index(attribute)
    S = vae.config.image_size
    crop = getattr(vae.config, "crop", None) or 148.0
    mask = torch.from_numpy(face_mask(S, Frame(image_size=S, crop=crop)))
    v = torch.as_tensor(np.array(cal["vectors"][attribute], dtype=np.float32))
    weight = footprint_weight(cal["footprints"][attribute])
    others = independent_columns(judge, names, train_labels, attribute, judged)
    visible = [c for c in others if judge.names[c] not in set(hidden)]
    other_names = [judge.names[c] for c in others]
    col = judge.names.index(attribute)
    rng = np.random.default_rng([seed, 4, t])
    out: dict[str, Any] = {}
    for direction, label, step in (
        ("add", 0, v),
        ("remove", 1, -cal["removal_scale"][attribute] * v),
    ):
        rows = np.sort(rng.permutation(np.flatnonzero(labels[:, t] == label))[:n_faces])
        if rows.size == 0:
            out[direction] = None
            continue
        x = faces(idx[rows])
        z0 = torch.from_numpy(z[rows]).float()
        res: dict[str, Any] = {"n": int(rows.size)}
        # the local blend redraws as much as calibration chose for this vector and direction
        redraw = res["redraw"] = redraw_of(cal.get("calibration", {}), attribute, direction)
        steps, w_rows, r_rows = step[None].expand(rows.size, -1), weight, redraw
        if direction == "add" and cal.get("swaps", {}).get(attribute):
            # a face showing a rival of the attribute's exclusive group gets its swap
            steps, w_rows, r_rows, res["swapped"] = _swapped(
                cal, attribute, z[rows], v, weight, redraw
            )
        # a vector whose edit was chosen to stop each face at its reach does so, and one
        # whose hold was kept holds its labels on each face (conceptvae.hold)
        d0 = torch.cat([_decode(vae, z0[k : k + 256]).cpu() for k in range(0, rows.size, 256)])
        rule = EditRule()  # without readers, every face its whole step
        if cal.get("readers") is not None:
            rule = EditRule.of(cal.get("calibration", {}), attribute, direction)
        if not rule.plain:
            # the reach read on the crops as the local blend shows them; the unedited faces
            # read as drawn: d0
            steps = rule_steps(
                vae, z0, steps, cal["readers"], [attribute], label == 0, rule,
                seen=partial(crop_edit, x, d0, blend="local", weight=w_rows, redraw=r_rows),
                unedited=redrawn(vae, None, drawn=d0) if rule.held else None,
            )  # fmt: skip
            res.update(_rule_record(rule))
        d1 = torch.cat(
            [_decode(vae, z0[k : k + 256] + steps[k : k + 256]).cpu()
             for k in range(0, rows.size, 256)]
        )  # fmt: skip
        before = judge.decide(x).cpu()
        implied_by = implied(train_labels, names, attribute, other_names, 1 - label)
        reasons = leakage_reasons(judge, other_names, hidden, implied_by)
        free = [c for c in others if reasons[judge.names[c]] == "vector"]
        detail = {o: f", P={p:.2f} given the target" for o, p in implied_by.items()}
        detail.update(
            {o: f", accuracy {judge.accuracy.get(o) or 0:.2f}"
             for o, r in reasons.items() if r == "weak judge"}
        )  # fmt: skip
        res.update(reasons=reasons, implied=implied_by)
        people = None if groups is None else np.asarray(groups)[rows]
        # the null edit: the local blend with no step, i.e. the reconstruction inside the
        # footprint; its flips are the model's redrawing, not the vector's doing
        null = judge.decide(
            crop_edit(x, d0, d0, "local", weight=w_rows, mask=mask, redraw=r_rows)
        ).cpu()
        null_flips = (null != before).float().mean(0)
        res["null"] = {
            "leakage_free": float(null_flips[free].mean()) if free else 0.0,
            "flips": {judge.names[c]: float(null_flips[c]) for c in others},
        }
        for c in others:
            o = judge.names[c]
            detail[o] = detail.get(o, "") + f", {float(null_flips[c]):.0%} with no step"
        for blend in blends:
            img = crop_edit(x, d0, d1, blend, weight=w_rows, mask=mask, redraw=r_rows)
            after = judge.decide(img).cpu()
            hit = after[:, col] if label == 0 else ~after[:, col]
            flips = (after != before).float().mean(0)
            lo, hi, deff = clustered_interval(hit.numpy(), people)
            res[blend] = {
                "success": float(hit.float().mean()),
                "success_interval": (lo, hi),
                "design_effect": deff,
                "leakage": float(flips[others].mean()) if others else 0.0,
                "leakage_visible": float(flips[visible].mean()) if visible else 0.0,
                "leakage_free": float(flips[free].mean()) if free else 0.0,
                "flips": {judge.names[c]: float(flips[c]) for c in others},
                "ssim": _outside_ssim(img, x, None),
                "ssim_outside": _outside_ssim(img, x, w_rows),
            }
            res[blend]["why"] = explain(res[blend], reasons, detail)
        out[direction] = res
    out["hidden"] = list(hidden)
    return out


def _rule_record(rule: EditRule) -> dict[str, Any]:
    """What :func:`measure_edits` records of the rule its edit took: ``reach``, and for a
    hold ``push`` (where it lengthens), ``held`` and ``hold_margin`` (where it is firm)."""
    out: dict[str, Any] = {} if rule.reach is None else {"reach": rule.reach}
    if rule.held:
        out.update({"push": rule.push} if rule.push != 1.0 else {})
        out["held"] = list(rule.held)
        out.update({"hold_margin": rule.margin} if rule.margin is not None else {})
    return out


def _swapped(
    cal: dict[str, Any], name: str, z: np.ndarray, v: torch.Tensor, weight: torch.Tensor,
    redraw: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:  # fmt: skip
    """Per face of ``z`` (B, D), adding ``name``: the step (B, D), the local blend's weight
    and redraw maps (B, 1, S, S), and the share of faces that got a swap instead of ``v``."""
    swaps, fps = cal["swaps"][name], cal.get("swap_footprints", {}).get(name, {})
    who = cal["rivals"](name, z)
    weights = {r: footprint_weight(fp) for r, fp in fps.items()}
    steps, ws, gs = [], [], []
    for r in who:
        steps.append(v if r is None else torch.tensor(np.asarray(swaps[r], np.float32)))
        ws.append(weights.get(r, weight) if r is not None else weight)
        gs.append(redraw if r is None else swap_redraw(cal.get("calibration", {}), name, r))
    w = torch.stack(ws)[:, None]
    r_map = torch.tensor(gs, dtype=w.dtype)[:, None, None, None] * w
    share = float(np.mean([r is not None for r in who])) if who else 0.0
    return torch.stack(steps), w, r_map, share


FLOOR_MARGIN = 0.01  # an edit within this of the true edit's leakage is at the judge's floor
VERDICTS = (
    "works",
    "at the judge's floor",
    "data ties",
    "at the model's floor",
    "the true direction leaks as much",
    "too weak",
    "the judge misses the true edit",
    "vector leaks",
)


def success_interval(success: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% at ``z`` 1.96) of a success share measured on ``n``
    faces: how far the true share may be from the one measured, by sampling alone."""
    if n <= 0:
        return 0.0, 1.0
    z2 = z * z / n
    mid = (success + z2 / 2) / (1 + z2)
    half = z * math.sqrt(success * (1 - success) / n + z2 / (4 * n)) / (1 + z2)
    return max(0.0, mid - half), min(1.0, mid + half)


def clustered_interval(
    hits: np.ndarray, groups: np.ndarray | None = None, z: float = 1.96
) -> tuple[float, float, float]:
    """The success share of ``hits`` (one bool per face) with its 95% interval when faces come
    in groups that succeed or fail together (``groups``: the person of each face, -1 unknown
    and then a group of its own): the Wilson interval on the effective number of faces, the
    faces divided by the design effect (the cluster-robust variance of the share over the
    variance if every face were drawn on its own, at least 1). Returns ``(lo, hi, design
    effect)``; without ``groups`` it is :func:`success_interval`'s interval and 1."""
    hits = np.asarray(hits, dtype=np.float64).ravel()
    n = hits.size
    if n == 0:
        return 0.0, 1.0, 1.0
    p = float(hits.mean())
    deff = 1.0
    if groups is not None:
        g = np.asarray(groups).ravel()
        g = np.where(g >= 0, g, -1 - np.arange(n))  # an unknown person is one of a kind
        _, inverse = np.unique(g, return_inverse=True)
        resid = np.bincount(inverse, weights=hits - p)  # per person: Y_j - p n_j
        k = resid.size
        iid = p * (1 - p) / n
        if k > 1 and iid > 0:
            robust = k / (k - 1) * float((resid**2).sum()) / n**2
            deff = max(1.0, robust / iid)
    lo, hi = success_interval(p, n / deff, z)
    return lo, hi, deff


def verdict(row: dict[str, Any], floor: dict[str, float] | None = None) -> tuple[str, str]:
    """Why a measured edit (a :func:`summarize` row: success, leakage, leakage_free, why) meets
    the goals or not, as ``(kind, reason)``; ``kind`` is one of ``VERDICTS``:

    - ``works``: success >= 95% and leakage <= 2%;
    - ``at the judge's floor``: it succeeds, and leaks no more than ``FLOOR_MARGIN`` above the
      true edit (``floor``: the ``success`` and ``leakage`` the same judge gives faces
      re-rendered with the attribute flipped; SynthFaces only): no vector can do better as
      this judge sees it;
    - ``data ties``: it succeeds and its free leakage is <= 2%: what leaks beyond is labels the
      data ties to the target (implied), the target hides, or the judge tells poorly;
    - ``at the model's floor``: it succeeds, and the model itself leaks as much (within
      ``FLOOR_MARGIN``) when handed the true edit, each face moved to its re-rendered
      counterfactual's own latent (``floor["decoded_leakage"]``): the decoder's doing, not the
      vector's;
    - ``the true direction leaks as much``: it succeeds, and the one direction measured from
      true edits (their mean latent change, calibrated the same way) leaks as much
      (``floor["direction_leakage"]``): a better estimate of the direction would not help; only
      an edit that is not one step along one direction could;
    - ``too weak``: success under 95% (with ``floor``, whether the judge sees the true edit;
      with the row's ``n``, the success's 95% interval from sampling that many faces);
    - ``the judge misses the true edit``: it succeeds, but neither the true edit (the 95%
      interval of ``floor["success"]`` on ``floor["n"]`` faces) nor the true edits' mean
      direction at its calibrated strength (``floor["direction_success"]``) is seen by the
      judge on 95% of faces: this judge sees the target only with what the data ties to it,
      so its 95% asks for more than the target. Weaker than the floors above: it does not
      show that no direction could do it, only that the true ones cannot. Also an edit
      short of 95% whose success is at least both of those (it is seen as often as the
      true edits are, or more), which would otherwise be *too weak*;
    - ``vector leaks``: the vector itself flips free labels; the reason names the largest and,
      with ``floor``, what the model's true edits leak.
    """
    succ, leak = row["success"], row["leakage"]
    free = row.get("leakage_free", leak)
    if succ >= SUCCESS_GOAL and leak <= LEAKAGE_GOAL:
        return "works", f"success {succ:.0%}, leakage {leak:.1%}"
    if succ < SUCCESS_GOAL:
        seen = ""
        if floor is not None:
            seen = f"; the judge finds the true edit on {floor['success']:.0%} of faces"
        if row.get("n"):  # how far sampling alone may put the measured share from the truth
            lo, hi = row.get("success_interval") or success_interval(succ, row["n"])
            seen += f"; 95% interval {lo:.1%}-{hi:.1%} on {row['n']} faces"
        missed = _judge_misses(floor)
        if missed and succ >= max(floor["success"], floor["direction_success"]):
            # short of 95%, but no less often seen than the true edits: the judge's 95% asks
            # for more than the target (what the data ties to it too)
            return VERDICTS[6], f"success {succ:.1%} < {SUCCESS_GOAL:.0%}; {missed}"
        return "too weak", f"success {succ:.1%} < {SUCCESS_GOAL:.0%}{seen}"
    if floor is not None and leak <= max(LEAKAGE_GOAL, floor["leakage"] + FLOOR_MARGIN):
        return (
            "at the judge's floor",
            f"leakage {leak:.1%}; the true edit leaks {floor['leakage']:.1%} by the same judge",
        )
    if free <= LEAKAGE_GOAL:
        return "data ties", f"leakage {leak:.1%}, free leakage {free:.1%}"
    truths = [  # (verdict, what, its leakage), the per-face truth first
        (VERDICTS[3], "the model's decoding of the true edit", "decoded_leakage"),
        (VERDICTS[4], "the true edits' mean direction", "direction_leakage"),
    ]
    truths = [(k, w, floor[key]) for k, w, key in truths if (floor or {}).get(key) is not None]
    told = "; ".join(f"{w} leaks {v:.1%}" for _, w, v in truths)
    for kind, _, level in truths:
        if leak <= level + FLOOR_MARGIN:
            return kind, f"leakage {leak:.1%}; {told}"
    own = [w for w in row.get("why", []) if "(vector" in w]
    reason = f"free leakage {free:.1%}: {'; '.join(own) or 'many small flips'}"
    missed = _judge_misses(floor)
    if missed:
        return VERDICTS[6], f"{missed}; {reason}"
    return "vector leaks", reason + (f" ({told})" if told else "")


def _judge_misses(floor: dict[str, float] | None) -> str:
    """Why the judge does not see the true edits (``verdict``'s ``the judge misses the true
    edit``), or "" when it sees the true edit or the true direction on 95% of faces, or the
    floor does not say."""
    if not floor or floor.get("n") is None or floor.get("direction_success") is None:
        return ""
    hi = success_interval(floor["success"], int(floor["n"]))[1]
    direction = floor["direction_success"]
    if hi >= SUCCESS_GOAL or direction >= SUCCESS_GOAL:
        return ""
    return (
        f"the judge sees the true edit on {floor['success']:.0%} of {int(floor['n'])} faces "
        f"(at most {hi:.0%}) and the true direction on {direction:.0%}"
    )


def summarize(measured: dict[str, Any], methods: Sequence[str], blend: str = "local") -> list:
    """One row per (attribute, direction) of ``measured`` (attribute -> ``{"methods": {method:
    measure_edits(...)}}``): the best method (one that works first, then the fewest flips,
    then the most success), its numbers with ``blend``, whether it works by the issue's
    leakage and by free leakage, whether every method is within 10 points of it, why it leaks,
    and the labels its edit held (``held``: empty where it holds none)."""
    rows = []
    for a, v in measured.items():
        for d in ("add", "remove"):
            cells = {
                m: v["methods"][m][d][blend]
                for m in methods
                if m in v["methods"] and v["methods"][m].get(d) is not None
            }
            if not cells:
                continue

            def score(c):
                ok = c["success"] >= SUCCESS_GOAL and c["leakage"] <= LEAKAGE_GOAL
                return (ok, -c["leakage"] if ok else c["success"] - c["leakage"])

            best = max(cells, key=lambda m: score(cells[m]))
            c = cells[best]
            top = c["success"]
            reached = c["success"] >= SUCCESS_GOAL
            rows.append(
                {
                    "attribute": a,
                    "direction": d,
                    "best_method": best,
                    **{k: c.get(k) for k in ("success", "leakage", "leakage_visible",
                                              "leakage_free", "ssim", "ssim_outside")},
                    "works": reached and c["leakage"] <= LEAKAGE_GOAL,
                    "works_visible": reached and c["leakage_visible"] <= LEAKAGE_GOAL,
                    "works_free": reached and c.get("leakage_free", 1.0) <= LEAKAGE_GOAL,
                    "methods_within_10": all(top - x["success"] <= 0.10 for x in cells.values()),
                    "success_by_method": {m: x["success"] for m, x in cells.items()},
                    "leakage_by_method": {m: x["leakage"] for m, x in cells.items()},
                    "why": c.get("why", []),
                    "held": list(v["methods"][best][d].get("held", [])),
                    "hold_margin": v["methods"][best][d].get("hold_margin"),
                    "reach": v["methods"][best][d].get("reach"),
                    "push": v["methods"][best][d].get("push"),
                }
            )  # fmt: skip
            rows[-1]["verdict"] = verdict(rows[-1])[0]
    return rows

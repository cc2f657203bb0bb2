"""Holding the other attributes of a face while an edit moves it.

A concept vector is one direction for every face, but the decoder is not linear: the same step
that adds a goatee to one face can also take a fringe off another. A *held* edit corrects each
face's step after the fact. It decodes the edited latent, encodes the result again, and reads
every label off that latent with a linear *reader* (a logistic regression per label, fitted on
the train split's posterior means). Each held label whose reading changed side, against the
same reading of the unedited face's decode, is put back with the smallest change of the latent
that also leaves the edit's own labels' readings where the step took them. Two rounds.
A *firm* hold (``margin``) also puts back a reading that stayed on its side but moved toward
the boundary by more than ``margin`` logits: the judge, reading the blended photo rather than
the redrawn latent, often flips a label the reader only saw weaken.

The readers are the model's own view of the labels (no judge is involved), fitted once by
``conceptvae vectors`` and saved beside the bank (``readers.safetensors``). Which labels an
edit holds, whether holding helps at all and whether firmly, is decided per vector and
direction when the bank is calibrated (:func:`choose_holds`): the labels free to vary with the
target (|r| < 0.3 and not implied by it), kept only where the judge finds less leakage on
held-out faces at no real cost in success.

A *reach* is the same per-face reading turned on the edit's own label: strength 1 is the step
that makes 98% of held-out faces show the attribute, so most faces are moved further than they
need, and the extra distance is where other labels change. An edit with a reach stops each
face at the least part of its step (half, five eighths, ...) at which the target's reader
reads the edited crop (as the blend shows it: the photo's own pixels where the edit does not
redraw) a threshold of logits past its boundary; a face that never reads so takes the whole
step. Whether a direction has a reach, and which threshold, is chosen with its
hold, by the same rule.

A *push* goes the other way: a hold also pulls back part of what the step did to the target,
so a held edit can fall short of the success strength 1 was calibrated for. A pushed edit
lengthens the step (1.15 or 1.3 times) and holds that; chosen by the same rule again, and
only when asked: in styles the model never saw it did not help.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from conceptvae._fs import atomic_write
from conceptvae.errors import ModelError

READERS_NAME = "readers.safetensors"
HOLD_ROUNDS = 2  # correction rounds per edit
HOLD_GAIN = 0.003  # a hold is kept where it cuts the judged leakage by at least this
HOLD_COST = 0.01  # ... and costs at most this much success
# ... half as much where it stops faces at their reach: that takes away the margin strength 1
# keeps on each face, which a style the model never saw needs (docs/edit-measurements.md, "A reach")
REACH_COST = 0.005
# a firm hold puts back a held reading that moved this many logits toward its boundary; the
# rules choose_holds tries per direction, the plain (side only) rule first
HOLD_MARGIN = 1.0
HOLD_RULES: tuple[float | None, ...] = (None, HOLD_MARGIN)
# per-face strength (a *reach*): an edit that the model already reads clearly on the target's
# side part of the way is stopped there: the least multiplier of REACH_GRID at which the target's
# reader reads the edited crop at least the threshold past its boundary (else the whole step);
# choose_holds tries each threshold of REACH_THRESHOLDS (logits) per direction
REACH_GRID: tuple[float, ...] = (0.5, 0.625, 0.75, 0.875)
# 8 logits or more: a style the readers never saw moves their readings by a few logits
# (docs/edit-measurements.md, "A reach")
REACH_THRESHOLDS: tuple[float, ...] = (8.0, 16.0)
# a *push*: a held edit whose step is this many times strength 1's. The hold puts back the
# labels the step changed, and with them part of the target (firm holds most: Male + lost 4
# points of success on valid faces); a longer step held gets that back for less leakage than
# the plain step had. choose_holds tries each push with each hold rule when asked
# (`vectors --push`): not by default, since on faces in a style the model never saw it gave
# no gain and lost success on some directions (docs/edit-measurements.md, "A push")
HOLD_PUSHES: tuple[float, ...] = (1.15, 1.3)
MAX_READER_ROWS = 20_000  # rows the readers are fitted on (CelebA's train split has 162,770)


@dataclass
class Readers:
    """One linear reader per label: ``logit = weight @ z + bias`` on a posterior mean ``z``.

    ``names`` (A labels), ``weight`` (A, D) and ``bias`` (A,) float32, in latent units.
    """

    names: list[str]
    weight: np.ndarray
    bias: np.ndarray

    @classmethod
    def fit(cls, z: np.ndarray, y: np.ndarray, names: Sequence[str], seed: int = 0) -> Readers:
        """Logistic regressions (C = 1, on standardised latents, mapped back to latent units)
        of each label of ``y`` (N, A) on ``z`` (N, D), on up to ``MAX_READER_ROWS`` rows. A
        label with one class only gets a zero reader (it reads as absent and is never held)."""
        from sklearn.linear_model import LogisticRegression

        z = np.asarray(z, dtype=np.float64)
        y = np.asarray(y)
        if z.shape[0] > MAX_READER_ROWS:
            rows = np.sort(np.random.default_rng(seed).permutation(z.shape[0])[:MAX_READER_ROWS])
            z, y = z[rows], y[rows]
        mu, sd = z.mean(0), z.std(0) + 1e-8
        zs = (z - mu) / sd
        weight = np.zeros((y.shape[1], z.shape[1]), np.float32)
        bias = np.full(y.shape[1], -1.0, np.float32)
        for j in range(y.shape[1]):
            if y[:, j].min() == y[:, j].max():
                continue
            fit = LogisticRegression(C=1.0, max_iter=1000).fit(zs, y[:, j])
            w = fit.coef_[0] / sd
            weight[j] = w
            bias[j] = fit.intercept_[0] - float(w @ mu)
        return cls(list(names), weight, bias)

    def columns(self, names: Sequence[str]) -> list[int]:
        """The rows of ``names`` (exact, else case-insensitive); a name without a reader is an
        error with the closest names the readers know (``attributes``' resolver)."""
        from attributes.estimators import _resolve

        return [_resolve(n, self.names, "the labels to hold") for n in names]

    def merged(self, other: Readers | None) -> Readers:
        """These readers plus those of ``other`` for labels these do not have."""
        if other is None or other.weight.shape[1] != self.weight.shape[1]:
            return self
        extra = [j for j, n in enumerate(other.names) if n not in self.names]
        return Readers(
            self.names + [other.names[j] for j in extra],
            np.concatenate([self.weight, other.weight[extra]]),
            np.concatenate([self.bias, other.bias[extra]]),
        )

    def save(self, directory: str | os.PathLike) -> Path:
        """``directory/readers.safetensors``, written atomically; the names in its header."""
        from safetensors.numpy import save

        path = Path(directory) / READERS_NAME
        data = save(
            {"weight": np.ascontiguousarray(self.weight, np.float32),
             "bias": np.ascontiguousarray(self.bias, np.float32)},
            metadata={"names": json.dumps(self.names)},
        )  # fmt: skip
        atomic_write(path, lambda f: f.write(data))
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Readers | None:
        """The readers saved in ``directory``, or None where there are none (a bank fitted
        before readers were): a damaged file is an error naming it."""
        from safetensors import safe_open

        path = Path(directory) / READERS_NAME
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                names = json.loads((f.metadata() or {})["names"])
                weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        except Exception as e:  # noqa: BLE001 - any damage reads the same to the user
            raise ModelError(
                f"cannot read {path} ({type(e).__name__}: {e}): run `conceptvae vectors` again "
                "to fit the readers, or delete the file to edit without holding"
            ) from None
        if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(names) != weight.shape[0]:
            raise ModelError(
                f"{path} is inconsistent ({len(names)} names, weight {weight.shape}, bias "
                f"{bias.shape}): run `conceptvae vectors` again"
            )
        return cls(list(names), weight.astype(np.float32), bias.astype(np.float32))


def free_labels(
    train_labels: np.ndarray, names: Sequence[str], target: str, state: int
) -> list[str]:
    """The labels an edit of ``target`` to ``state`` (1: add, 0: remove) should leave as they
    are: correlated with it by |r| < ``CORRELATED`` on the train labels, and not implied by the
    state (``calibration.implied``: the data all but fixes them there, so holding them would
    fight the edit), nor with one class only."""
    from attributes.estimators import _correlations
    from conceptvae.calibration import CORRELATED, implied

    names = list(names)
    y = np.asarray(train_labels)
    r = np.nan_to_num(_correlations(y))
    t = names.index(target)
    varied = [n for j, n in enumerate(names) if j != t and 0 < y[:, j].sum() < y.shape[0]]
    loose = [n for n in varied if abs(r[t, names.index(n)]) < CORRELATED]
    tied = implied(y, names, target, loose, state)
    return [n for n in loose if n not in tied]


@torch.inference_mode()
def redrawn(
    vae: Any, z: torch.Tensor | None, drawn: torch.Tensor | None = None, batch_size: int = 256
) -> torch.Tensor:
    """``E(D(z))`` (B, D) on the CPU: the latent of the face the model draws for ``z``, what
    the readers read. ``drawn``: ``D(z)`` (clamped to [0, 1]) where it is decoded already, so
    it is only encoded (``z`` may then be None); in batches of ``batch_size``, as
    :func:`hold_steps` reads them."""
    if drawn is None:
        drawn = vae.decode(z.to(vae.device)).float().clamp(0, 1)
    return torch.cat(
        [vae.encode(drawn[k : k + batch_size].to(vae.device)).mean.float().cpu()
         for k in range(0, drawn.shape[0], batch_size)]
    )  # fmt: skip


@torch.inference_mode()
def hold_steps(
    vae: Any,
    z: torch.Tensor,
    steps: torch.Tensor,
    readers: Readers,
    targets: Sequence[str],
    held: Sequence[str],
    *,
    rounds: int = HOLD_ROUNDS,
    batch_size: int = 256,
    unedited: torch.Tensor | None = None,
    edited: torch.Tensor | None = None,
    margin: float | None = None,
) -> torch.Tensor:
    """Per face of ``z`` (B, D), its step (``steps`` (B, D) or (D,)) corrected so that no label
    of ``held`` reads differently (its reader's sign on ``E(D(z + step))`` against on
    ``E(D(z))``) while the readings of ``targets`` stay where the step took them. Each round
    moves each face by the least-norm change that puts the changed readings back to the
    unedited face's values with ``targets`` unchanged. ``margin`` (a firm hold): a reading
    that kept its side but moved more than this many logits toward the boundary counts as
    changed too (None: only a change of side). ``unedited``: ``E(D(z))`` when it is known
    already (:func:`redrawn`; a sweep of one face reads it once); ``edited``: ``E(D(z +
    steps))``, likewise (the first round reads it instead of drawing the edit again). Returns
    the new steps (B, D)."""
    z = z.float().cpu()
    steps = steps.float().cpu().expand_as(z).clone()
    held = [h for h in held if h not in set(targets)]
    if not held or z.shape[0] == 0:
        return steps
    w_all = torch.from_numpy(readers.weight)
    b_all = torch.from_numpy(readers.bias)
    h_cols = readers.columns(held)
    t_cols = readers.columns(targets)
    wh, wt, bh = w_all[h_cols], w_all[t_cols], b_all[h_cols]

    def read(drawn_z: torch.Tensor | None, z_: torch.Tensor) -> torch.Tensor:
        # the held readings of a face as drawn: given, else drawn here
        return (redrawn(vae, z_) if drawn_z is None else drawn_z.float().cpu()) @ wh.T + bh

    out = []
    for k in range(0, z.shape[0], batch_size):
        sl = slice(k, k + batch_size)
        z0 = z[sl]
        z1 = z0 + steps[sl]
        c0 = read(None if unedited is None else unedited[sl], z0)
        for r in range(rounds):
            c1 = read(edited[sl] if r == 0 and edited is not None else None, z1)
            moved = (c1 > 0) != (c0 > 0)  # (B, H): the readings that changed side
            if margin is not None:  # ... or went more than margin toward it
                moved |= c0.abs() - c1.abs() > margin
            moved = moved.float()
            if not bool(moved.any()):
                break
            n = z1.shape[0]
            a = torch.cat([wh[None] * moved[:, :, None], wt[None].expand(n, -1, -1)], 1)
            rhs = torch.cat([(c0 - c1) * moved, torch.zeros(n, len(t_cols))], 1)
            z1 = z1 + (torch.linalg.pinv(a) @ rhs[:, :, None])[:, :, 0]
        out.append(z1 - z0)
    return torch.cat(out)


@torch.inference_mode()
def reach_readings(
    vae: Any,
    z: torch.Tensor,
    steps: torch.Tensor,
    readers: Readers,
    target: str,
    adding: bool,
    *,
    grid: Sequence[float] = REACH_GRID,
    batch_size: int = 256,
    seen: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """How clearly the model reads ``target`` on each face of ``z`` (B, D) moved part of its
    step (``steps`` (B, D) or (D,)): per face and multiplier ``g`` of ``grid``, the target's
    reader on the latent of what the edit shows, ``E(seen(D(z + g * step)))``, negated when
    removing (> 0: read on the edit's side), (B, G). ``seen`` maps the faces drawn
    (B, 3, S, S) to the crops the edit makes of them (the photo's own pixels where the edit
    does not redraw, :func:`~conceptvae.calibration.crop_edit`): a photo in a style the model
    never drew then reads as it will look, not as the model would draw it. None: the drawing
    itself."""
    z = z.float().cpu()
    steps = steps.float().cpu().expand_as(z)
    col = readers.columns([target])[0]
    w = torch.from_numpy(readers.weight[col])
    b = float(readers.bias[col])
    read = []
    for g in grid:
        moved = z + g * steps
        drawn = torch.cat(
            [vae.decode(moved[k : k + batch_size].to(vae.device)).float().clamp(0, 1).cpu()
             for k in range(0, z.shape[0], batch_size)]
        )  # fmt: skip
        shown = drawn if seen is None else seen(drawn)
        read.append(redrawn(vae, None, drawn=shown, batch_size=batch_size) @ w + b)
    return (1.0 if adding else -1.0) * torch.stack(read, 1)


def reach_scales(
    readings: torch.Tensor, threshold: float, grid: Sequence[float] = REACH_GRID
) -> torch.Tensor:
    """Per face (``readings`` (B, G) from :func:`reach_readings`), the least multiplier of
    ``grid`` at which it reads at least ``threshold`` on the edit's side, else 1: (B,)."""
    scale = torch.ones(readings.shape[0])
    for j in reversed(range(len(grid))):
        scale = torch.where(readings[:, j] >= threshold, torch.tensor(float(grid[j])), scale)
    return scale


@dataclass(frozen=True)
class EditRule:
    """How a calibrated vector's edit in one direction moves each face (what
    :func:`choose_holds` kept): cut to its ``reach`` (a threshold in logits; None: the whole
    step), or lengthened ``push`` times, and then with the labels ``held`` put back by the rule
    ``margin`` (:func:`hold_steps`). The default moves every face by the same step."""

    reach: float | None = None
    push: float = 1.0
    held: tuple[str, ...] = ()
    margin: float | None = None

    @classmethod
    def of(cls, calibration: dict[str, Any], name: str, direction: str) -> EditRule:
        """The rule a bank's calibration records (its metadata's ``"calibration"``) kept for
        ``name``'s edit in ``direction``; the default where none was kept."""
        return cls(
            reach=reach_of(calibration, name, direction),
            push=push_of(calibration, name, direction),
            held=tuple(held_labels_of(calibration, name, direction)),
            margin=hold_margin_of(calibration, name, direction),
        )

    @property
    def plain(self) -> bool:
        """Every face moves by the step as it is."""
        return self.reach is None and self.push == 1.0 and not self.held


def rule_steps(
    vae: Any,
    z: torch.Tensor,
    steps: torch.Tensor,
    readers: Readers,
    targets: Sequence[str],
    adding: bool,
    rule: EditRule,
    *,
    seen: Callable[[torch.Tensor], torch.Tensor] | None = None,
    readings: torch.Tensor | None = None,
    unedited: torch.Tensor | None = None,
    edited: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per face of ``z`` (B, D), its step (``steps`` (B, D) or (D,)) as ``rule`` moves it: the
    one definition of a calibrated edit, for measuring edits and for making them. First cut
    to the face's reach (:func:`reach_scales` of ``readings``, else of :func:`reach_readings`
    read here on ``steps`` and ``seen``; a sweep passes those read at strength 1), then
    lengthened ``rule.push`` times, then held (:func:`hold_steps` with ``unedited`` and
    ``edited``, which is dropped once the step changed). Returns (B, D); ``steps`` itself for
    a plain rule."""
    if rule.plain:
        return steps
    if rule.reach is not None:
        if readings is None:
            readings = reach_readings(vae, z, steps, readers, targets[0], adding,
                                      batch_size=batch_size, seen=seen)  # fmt: skip
        steps = reach_scales(readings, rule.reach)[:, None] * steps.float().cpu().expand_as(z)
        edited = None  # the hold draws each face at its own part of the step
    if rule.push != 1.0:
        steps, edited = rule.push * steps, None
    if rule.held:
        steps = hold_steps(vae, z, steps, readers, targets, rule.held, margin=rule.margin,
                           batch_size=batch_size, unedited=unedited, edited=edited)  # fmt: skip
    return steps


def choose_holds(
    vae: Any,
    judge: Any,
    cal: dict[str, Any],
    readers: Readers,
    *,
    faces: Any,
    held_idx: np.ndarray,
    held_z: np.ndarray,
    held_labels: np.ndarray,
    names: Sequence[str],
    train_labels: np.ndarray,
    n_faces: int = 600,
    min_accuracy: float = 0.90,
    seed: int = 0,
    progress: bool = True,
    rules: Sequence[float | None] = HOLD_RULES,
    reaches: Sequence[float] = REACH_THRESHOLDS,
    pushes: Sequence[float] = (),
) -> dict[str, Any]:
    """Per judged vector of ``cal`` (a bank's :func:`~conceptvae.vectors.bank_calibration`)
    and direction: its edit at strength +/-1 (the local blend, its footprint and redraw) on up
    to ``n_faces`` held-out faces, plain and held (:func:`hold_steps`, holding
    :func:`free_labels` that have readers) by each of ``rules`` (``margin``: None holds a
    label's side, a number holds firmly), and with each face's step cut to its reach by each
    threshold of ``reaches`` (:func:`reach_scales`), and by each rule on top of the reach
    that helps most (if any), and held by each rule with the step lengthened by each of
    ``pushes`` (none by default; :data:`HOLD_PUSHES` with ``vectors --push``); the edit
    that helps most (the first of equals: a hold alone, a reach alone, both, a pushed hold)
    is the one tried. It is kept where it cuts the judge's leakage by at
    least ``HOLD_GAIN`` and costs at most ``HOLD_COST`` success, none of it below the vector's
    calibration target, on those faces and again on a second draw of other held-out faces (an
    edit chosen on faces is helped by their luck, as a strength read off them was). Returns
    the calibration records with ``hold`` in each direction's: the labels held (none for a
    reach alone), the rule (``margin``), the ``reach`` (None: every face its whole step),
    ``push`` (1: the step as calibrated), ``kept``, both edits' success and leakage on the
    last draw and the faces measured
    (``chosen_on``: the first draw's, where there was a second). Vectors, strengths and
    footprints are unchanged."""
    from tqdm.auto import tqdm

    from conceptvae.calibration import (
        CALIBRATION_TARGET,
        _held_probe,
        edit_directions,
        footprint_weight,
        independent_columns,
        redraw_of,
    )

    names = list(names)
    judged = [n for n in judge.judged(min_accuracy) if n in names]
    records = {k: dict(v) for k, v in cal["calibration"].items()}
    todo = [n for n in cal["vectors"] if n in judged and n in readers.names]
    for name in tqdm(todo, desc="hold", unit="vector", disable=not progress, leave=False):
        t = names.index(name)
        v = torch.as_tensor(np.array(cal["vectors"][name], dtype=np.float32))
        weight = footprint_weight(cal["footprints"][name])
        others = independent_columns(judge, names, train_labels, name, judged)
        target = float(records[name].get("target", CALIBRATION_TARGET))
        for direction, label, sign in edit_directions(cal, name):
            # each direction's own draws: what is kept elsewhere does not move its faces
            rng = np.random.default_rng([seed, 7, t, label])
            probe = _held_probe(
                vae, judge, faces, held_idx, held_z, held_labels, t, label, n_faces, rng,
                target=judge.names.index(name), others=others, blend="local",
            )  # fmt: skip
            if probe is None or not records[name].get(direction):
                continue
            held = [n for n in free_labels(train_labels, names, name, 1 - label)
                    if n in readers.names]  # fmt: skip
            redraw = redraw_of(records, name, direction)
            edit = dict(
                vae=vae,
                cal=cal,
                readers=readers,
                name=name,
                held=held,
                step=sign * v,
                weight=weight,
                redraw=redraw,
                adding=direction == "add",
            )
            trial = _Trial(probe, **edit)
            plain = trial.plain
            # each hold rule; each reach (the per-face strength), and each hold rule on top of
            # the reach that cuts leakage most where it helps, if any
            tried = {(None, True, m, 1.0): trial.measure(None, True, m) for m in rules}
            alone = {r: trial.measure(r, False, None) for r in reaches}
            tried.update({(r, False, None, 1.0): alone[r] for r in reaches})
            helping = [r for r in reaches if _helps(plain, alone[r], target, REACH_COST)]
            reach = min(helping, key=lambda r: alone[r]["leakage"], default=None)
            if reach is not None:
                tried.update({(reach, True, m, 1.0): trial.measure(reach, True, m)
                              for m in rules})  # fmt: skip
            if held:  # a longer step held: what the hold took from the target, back
                tried.update({(None, True, m, p): trial.measure(None, True, m, p)
                              for p in pushes for m in rules})  # fmt: skip
            # the edit that cuts leakage most where it helps (the first of equals), else the
            # one that leaks least
            order = list(tried)
            best = min(order, key=lambda k: (not _keeps(k, plain, tried[k], target),
                                             tried[k]["leakage"], order.index(k)))  # fmt: skip
            reach, holds, margin, push = best
            holding = tried[best]
            kept = _keeps(best, plain, holding, target)
            record = {
                "labels": held if holds else [],
                "margin": margin,
                "reach": reach,
                "push": push,
                "n_faces": int(probe.z.shape[0]),
            }
            if kept:
                # kept on these faces partly by their luck: read it again on other valid
                # faces (the same ones where the split has no others), and keep it only if it
                # helps there too
                record["chosen_on"] = _summary(plain, holding, record["n_faces"])
                again = _held_probe(
                    vae, judge, faces, held_idx, held_z, held_labels, t, label, n_faces,
                    np.random.default_rng([seed, 8, t, label]), avoid=probe.rows,
                    target=judge.names.index(name), others=others, blend="local",
                )  # fmt: skip
                trial = _Trial(again, **edit)
                plain, holding = trial.plain, trial.measure(*best)
                kept = _keeps(best, plain, holding, target)
                record["n_faces"] = int(again.z.shape[0])
            records[name][direction] = {
                **records[name][direction],
                "hold": {**record, "kept": bool(kept), **_summary(plain, holding, None)},
            }
    return records


class _Trial:
    """The probe's faces edited by ``step`` as edits make it (adding, a face that shows a
    rival of an exclusive group gets its swap: its step, footprint and redraw), plainly
    (``plain``) and by each variant :meth:`measure` is asked for; what every variant reads
    first (the faces redrawn unedited, edited and part of the way) is read once."""

    def __init__(
        self, probe: Any, *, vae: Any, cal: dict[str, Any], readers: Readers, name: str,
        held: list[str], step: torch.Tensor, weight: Any, redraw: float, adding: bool,
    ) -> None:  # fmt: skip
        from conceptvae.calibration import _swapped, crop_edit

        if adding and cal.get("swaps", {}).get(name):
            step, weight, redraw, _ = _swapped(cal, name, probe.z.cpu().numpy(), step, weight,
                                               redraw)  # fmt: skip
        self.probe, self.vae, self.readers = probe, vae, readers
        self.name, self.held, self.adding = name, held, adding
        self.weight, self.redraw = weight, redraw
        self.step = step.float().cpu().expand_as(probe.z.float().cpu())
        self.plain = probe.at(step, weight, redraw)
        # from the faces the probe has decoded already
        self.unedited = redrawn(vae, None, drawn=probe.d0, batch_size=probe.batch_size)
        self.edited = redrawn(vae, None, drawn=probe.drawn(step), batch_size=probe.batch_size)
        self._readings: torch.Tensor | None = None
        # the probe's crops as the local blend shows the faces drawn
        self.seen = partial(crop_edit, probe.faces, probe.d0, blend="local", weight=weight,
                            redraw=redraw)  # fmt: skip

    def measure(
        self, reach: float | None, holds: bool, margin: float | None, push: float = 1.0
    ) -> dict[str, Any]:
        """The probe's measure (:meth:`EditProbe.at`) of the edit with each face's step cut
        to its ``reach`` (:func:`reach_scales`; None: the whole step) or lengthened ``push``
        times, and then, if ``holds``, held by the rule ``margin`` (:func:`hold_steps`)."""
        rule = EditRule(reach, push, tuple(self.held) if holds else (), margin)
        if reach is not None and self._readings is None:  # read once for every threshold
            self._readings = reach_readings(
                self.vae, self.probe.z, self.step, self.readers, self.name, self.adding,
                batch_size=self.probe.batch_size, seen=self.seen,
            )  # fmt: skip
        steps = rule_steps(self.vae, self.probe.z, self.step, self.readers, [self.name],
                           self.adding, rule, readings=self._readings, unedited=self.unedited,
                           edited=self.edited, batch_size=self.probe.batch_size)  # fmt: skip
        return self.probe.at(steps, self.weight, self.redraw)


def _keeps(
    variant: tuple[float | None, bool, float | None, float],
    plain: dict[str, Any],
    now: dict[str, Any],
    target: float,
) -> bool:
    """:func:`_helps` for an edit ``(reach, holds, margin, push)``: at the reach's cost where
    it has one."""
    return _helps(plain, now, target, HOLD_COST if variant[0] is None else REACH_COST)


def _helps(
    plain: dict[str, Any], holding: dict[str, Any], target: float, cost: float = HOLD_COST
) -> bool:
    """The rule that keeps a hold: ``HOLD_GAIN`` less leakage for at most ``cost`` success
    (``HOLD_COST``; ``REACH_COST`` for an edit with a reach), and only success above the
    calibration ``target``: an edit strength 1 took to the target stays there, one short of it
    loses nothing."""
    floor = max(plain["success"] - cost, min(plain["success"], target))
    return bool(holding["leakage"] <= plain["leakage"] - HOLD_GAIN and holding["success"] >= floor)


def _summary(plain: dict[str, Any], holding: dict[str, Any], n: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "success_at_1": holding["success"],
        "leakage_at_1": holding["leakage"],
        "plain": {"success_at_1": plain["success"], "leakage_at_1": plain["leakage"]},
    }
    return out if n is None else {**out, "n_faces": n}


def held_labels_of(calibration: dict[str, Any], name: str, direction: str) -> list[str]:
    """The labels a calibrated vector's edit in ``direction`` holds (empty: none; the hold was
    not kept, or the bank was calibrated before holds were chosen)."""
    hold = _kept_hold(calibration, name, direction)
    return list(hold.get("labels", []))


def reach_of(calibration: dict[str, Any], name: str, direction: str) -> float | None:
    """The threshold (:func:`reach_scales`) a calibrated vector's edit in ``direction`` cuts
    each face's step at, where its choice was kept; None (every face its whole step) for no
    reach and for a bank whose edits were chosen before reaches were tried."""
    reach = _kept_hold(calibration, name, direction).get("reach")
    return None if reach is None else float(reach)


def push_of(calibration: dict[str, Any], name: str, direction: str) -> float:
    """How many times its calibrated step a calibrated vector's held edit in ``direction``
    moves (a push, :data:`HOLD_PUSHES`): 1 where its kept hold has none, where no hold was
    kept, and for a bank whose holds were chosen before pushes were tried."""
    return record_push(_kept_hold(calibration, name, direction))


def record_push(hold: dict[str, Any]) -> float:
    """The push of a hold record (kept or not): 1 where it has none or holds no labels."""
    push = hold.get("push") if hold.get("labels") else None
    return 1.0 if push is None else float(push)


def hold_margin_of(calibration: dict[str, Any], name: str, direction: str) -> float | None:
    """The rule (:func:`hold_steps`' ``margin``) the kept hold of a calibrated vector's edit in
    ``direction`` was chosen with: None for a plain hold, for no hold, and for a bank whose
    holds were chosen before firm holds were tried."""
    margin = _kept_hold(calibration, name, direction).get("margin")
    return None if margin is None else float(margin)


def _kept_hold(calibration: dict[str, Any], name: str, direction: str) -> dict[str, Any]:
    """The hold record of a vector's edit in ``direction`` where it was kept, else {}."""
    hold = ((calibration.get(name) or {}).get(direction) or {}).get("hold") or {}
    return hold if hold.get("kept") else {}

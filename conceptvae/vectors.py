"""Concept vectors for a trained model: encode a dataset, fit, save the bank beside the model.

``conceptvae vectors`` is :func:`fit_vectors` plus printing. The posterior means of a split are
computed once per (model, data) pair and kept in ``RUN/latents/`` (a float32 ``.npy`` per split,
named by a hash of the model's weights and the cache's ``meta.json``), so asking again for other
attributes or another method does not encode the images again.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attributes.bank import VectorBank
from attributes.errors import VectorError
from attributes.estimators import AttributeVectors, _resolve, mean_difference
from attributes.groups import (
    MIN_SWAP_FACES,
    GroupClassifier,
    check_group,
    default_groups,
    swap_vectors,
)
from attributes.report import Report, quality_report
from conceptvae._fs import atomic_write, atomic_write_json, atomic_write_text, json_safe
from conceptvae.calibration import (
    EditProbe,
    calibrate,
    choose_redraws,
    footprint_weight,
    independent_columns,
    redraw_of,
)
from conceptvae.calibration import problems as calibration_problems
from conceptvae.data.cache import PreparedCache
from conceptvae.errors import DataError
from conceptvae.hold import HOLD_MARGIN, Readers, choose_holds, record_push
from conceptvae.model import ConceptVAE

LATENTS_DIR = "latents"
REPORT_TEXT = "vectors_report.txt"
REPORT_JSON = "vectors_report.json"
HEATMAP = "vectors_cosine.png"
METHODS = ("mean", "balanced", "classifier", "adjusted", "conditional", "orthogonal", "steered")
# what --method best tries (with --condition: the conditional method): per attribute, the one
# that works on the valid split, least leakage first
BEST_OF = ("mean", "balanced", "classifier", "adjusted", "orthogonal", "steered")
STEER_FACES = 256  # train faces whose pixel changes give each label's decoder direction
# held-out faces per attribute and direction of ``--method best``'s second calibration, which
# sets the chosen vectors' strengths: three times the choice's 200, so a step read off them
# (the first crossing of the target, or a flat curve's traded step) is less lucky
CONFIRM_FACES = 600
# a swap replaces a vector on the faces showing a rival only where it adds the attribute to at
# least this much more of them (on the same held-out faces, each at its own strength 1)
SWAP_GAIN = 0.02
# recalibrating on photos a judge labelled: a step lengthens only while the leakage that judge
# sees stays within this of the old step's (on the ink faces' train split, Brown_Hair -
# lengthened 3.9 times to 100% success at 19% leakage where the old step leaked 5.6%)
LABEL_FREE_LEAK = 0.03


@torch.inference_mode()
def encode_means(
    vae: ConceptVAE,
    cache: PreparedCache,
    indices: np.ndarray,
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> np.ndarray:
    """Posterior means of the cache's images at ``indices``: float32 (N, D)."""
    if cache.image_size != vae.config.image_size:
        raise DataError(
            f"{cache.path} holds {cache.image_size} px images but the model takes "
            f"{vae.config.image_size} px: prepare the data at {vae.config.image_size} px"
        )
    vae.eval()
    out = np.empty((indices.size, vae.config.latent_dim), np.float32)
    bar = tqdm(total=indices.size, desc="encoding", unit="img", disable=not progress, leave=False)
    with bar:
        for k in range(0, indices.size, batch_size):
            sel = indices[k : k + batch_size]
            x = cache.batch(sel).to(vae.device)
            out[k : k + sel.size] = vae.encode(x).mean.float().cpu().numpy()
            bar.update(sel.size)
    return out


def _images_digest(cache: PreparedCache) -> bytes:
    """SHA-256 of a cache's image bytes, in row order: about 1 GB/s, so CelebA at 64 px (2.5
    GB) takes seconds; remembered on the opened cache, whose images do not change."""
    digest = getattr(cache, "_images_sha256", None)
    if isinstance(digest, bytes):
        return digest
    images = cache.images
    h = hashlib.sha256(str(tuple(images.shape)).encode())
    for start in range(0, len(images), 2048):
        h.update(np.ascontiguousarray(images[start : start + 2048]).data)
    digest = h.digest()
    cache._images_sha256 = digest  # type: ignore[attr-defined]
    return digest


def data_key(cache: PreparedCache) -> str:
    """16 hex digits naming a prepared cache's contents: its images, label names, labels,
    splits and identities, and nothing about where or when it was made. The same data prepared
    twice, in any folder or on any machine, gets the same key, so its latents and judge (a
    shipped model's included) are reused; a changed pixel, label or split gets another."""
    h = hashlib.sha256(b"conceptvae data key 2")
    h.update(_images_digest(cache))
    h.update(json.dumps(list(cache.attr_names)).encode())
    for part in (cache.labels, cache.partition, cache.identity):
        a = np.ascontiguousarray(np.asarray(part))
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def split_latents(
    vae: ConceptVAE,
    cache: PreparedCache,
    split: str,
    run: str | os.PathLike | None = None,
    *,
    batch_size: int = 256,
    progress: bool = True,
    model_hash: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, latents)`` of a split; with ``run``, read from or written to its latent cache.

    The file name holds the model's and the data's hashes, so a retrained model or a re-prepared
    cache gets fresh latents; older files of the same split are removed.
    """
    idx = cache.split(split)
    if run is None or idx.size == 0:
        return idx, encode_means(vae, cache, idx, batch_size=batch_size, progress=progress)
    model_hash = model_hash or vae.model_hash()
    folder = Path(run) / LATENTS_DIR
    path = folder / f"{split}-{model_hash}-{data_key(cache)}.npy"
    if path.is_file():
        try:
            z = np.load(path, allow_pickle=False)
            if z.shape == (idx.size, vae.config.latent_dim) and z.dtype == np.float32:
                return idx, z
        except (OSError, ValueError):
            pass  # a damaged cache file is recomputed below
    z = encode_means(vae, cache, idx, batch_size=batch_size, progress=progress)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.save(f, z, allow_pickle=False))
    for old in folder.glob(f"{split}-*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return idx, z


def _heldout_split(cache: PreparedCache) -> str | None:
    for name in ("valid", "test"):
        if cache.split(name).size:
            return name
    return None


def decoder_directions(
    vae: ConceptVAE,
    z: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    *,
    n_faces: int = STEER_FACES,
    batch_size: int = 128,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per label, the latent direction along which its *pixel* change shows: name -> (D,)
    unit float64, for every label with both classes in ``labels``.

    A label's pixel change on a face is ``decode(z + m) - decode(z - m)`` with ``m`` its mean
    difference; pulled back through the decoder (the gradient of ``<decode(z), change>``), and
    averaged over ``n_faces`` faces of ``z``, it is the latent direction whose decoded change
    looks like that label's. A logistic normal says where the label *separates* in the
    latents, which can be far from where the decoder *draws* it: an edit orthogonal to the
    normal of Smiling can still paint a smile. The ``steered`` method keeps its steps
    orthogonal to both.
    """
    y = np.asarray(labels)
    pos = y.sum(0)
    usable = [k for k in range(y.shape[1]) if 0 < pos[k] < y.shape[0]]
    if not usable:
        return {}
    diffs, _ = mean_difference(z, y[:, usable], names=[names[k] for k in usable])
    rng = np.random.default_rng([seed, 0x5EE])
    rows = np.sort(rng.permutation(z.shape[0])[:n_faces])
    vae.eval()
    dev = vae.device
    steps = torch.as_tensor(diffs, dtype=torch.float32, device=dev)
    grads = torch.zeros(len(usable), z.shape[1], dtype=torch.float64)
    for k in range(0, rows.size, batch_size):
        zb = torch.as_tensor(z[rows[k : k + batch_size]], dtype=torch.float32, device=dev)
        zb.requires_grad_(True)
        x0 = vae.decode(zb).float()
        for j in range(len(usable)):
            with torch.no_grad():
                change = (vae.decode(zb + steps[j]) - vae.decode(zb - steps[j])).float()
            (g,) = torch.autograd.grad((x0 * change).sum(), zb, retain_graph=True)
            grads[j] += g.sum(0).double().cpu()
    out = {}
    for j, k in enumerate(usable):
        norm = float(grads[j].norm())
        if norm > 0 and np.isfinite(norm):
            out[names[k]] = (grads[j] / norm).numpy()
    return out


def make_estimator(
    method: str,
    attributes: list[str] | None = None,
    condition: list[str] | None = None,
    directions: dict[str, np.ndarray] | None = None,
) -> AttributeVectors:
    """The estimator the CLI asks for: ``--condition`` with mean/balanced/classifier means the
    conditional method on top of that base; ``steered`` is ``orthogonal`` with ``directions``
    (:func:`decoder_directions`; without them it fits as ``orthogonal``)."""
    if method not in METHODS:
        raise VectorError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    condition = list(condition or [])
    if method == "conditional" and not condition:
        raise VectorError("the conditional method needs --condition, e.g. --condition Male")
    if condition:
        base = "mean" if method == "conditional" else method
        return AttributeVectors(
            "conditional", attributes=attributes, condition=condition, base=base
        )
    if method in ("orthogonal", "steered"):
        # the balanced vector, orthogonal to the free labels' normals (and decoder directions)
        return AttributeVectors(
            "orthogonal",
            attributes=attributes,
            base="balanced",
            directions=directions if method == "steered" else None,
        )
    return AttributeVectors(method, attributes=attributes)


def fit_method(
    vae: ConceptVAE,
    method: str,
    z: np.ndarray,
    labels: np.ndarray,
    names: list[str],
    attributes: list[str] | None = None,
    condition: list[str] | None = None,
) -> AttributeVectors:
    """``make_estimator(method, ...)`` fitted on ``z``/``labels``; for ``steered``, with the
    decoder directions of ``vae`` measured on those latents first."""
    directions = decoder_directions(vae, z, labels, names) if method == "steered" else None
    return make_estimator(method, attributes, condition, directions).fit(z, labels, names)


def fit_vectors(
    vae: ConceptVAE,
    cache: PreparedCache,
    run: str | os.PathLike | None = None,
    *,
    method: str = "mean",
    attributes: list[str] | None = None,
    condition: list[str] | None = None,
    label_source: str | None = None,
    batch_size: int = 256,
    progress: bool = True,
    judge: Any = None,
    judge_factory: Any = None,
    blend: str = "local",
    n_faces: int = 200,
    confirm_faces: int = CONFIRM_FACES,
    groups: list[list[str]] | None = None,
    readers: Readers | None = None,
) -> tuple[VectorBank, Report]:
    """Fit concept vectors on the train split's posterior means, put them on one strength
    scale and judge them on valid/test.

    With ``judge`` (:class:`~conceptvae.evaluate.Judge`, trained on the same labels), each
    vector is calibrated on the held-out split (:func:`conceptvae.calibration.calibrate`):
    strength 1 adds the attribute to 98% of held-out faces as edited with ``blend`` (96% or
    more where a flat curve makes the last faces cost more leakage than they gain), -1 removes
    it; without one, or for attributes the judge cannot see, the uncalibrated latent scale
    applies (``judge_factory``: a function making the judge, called only when it is needed).
    Up to ``n_faces`` held-out faces per attribute and direction calibrate each candidate;
    with ``method="best"`` the chosen vectors are calibrated again on up to
    ``max(n_faces, confirm_faces)``, faces the choice did not see first. Every vector gets its
    footprint. With a judge and the local blend, the labels of exclusive ``groups`` (default:
    the hair colours, where the labels have them; ``[]``: none) get swaps
    (:func:`fit_swaps`, on up to ``max(n_faces, confirm_faces)`` faces), and with
    ``readers`` (:func:`fit_readers`) each vector's hold is chosen on as many
    (:func:`conceptvae.hold.choose_holds`). Returns the new
    vectors as a bank (provenance and calibration in its metadata) and a :class:`Report`
    (held-out AUC, norms, cosines, confounds, problems). Nothing is written except the latent
    cache.
    """
    if not cache.attr_names:
        raise DataError(
            f"{cache.path} has no labels: concept vectors need labelled images (a CelebA "
            "attribute file, a labels CSV, or --positive/--negative folders)"
        )
    names = list(cache.attr_names)
    if cache.split("train").size == 0:
        raise DataError(f"{cache.path} has no images in its train split to fit vectors on")
    # names first: a typo should not cost an encoding pass
    attributes = (
        None
        if attributes is None
        else [names[_resolve(a, names, "--attributes")] for a in attributes]
    )
    condition = [names[_resolve(a, names, "--condition")] for a in condition or []]
    for a in condition:
        if attributes is not None and a in attributes and len(attributes) == 1:
            raise VectorError(f"{a} is both the attribute and a condition: condition it on others")
    if method != "best":
        make_estimator(method, attributes, condition)
    # the groups too: checked on the train labels before any image is encoded
    found = resolve_groups(groups, np.asarray(cache.labels[cache.split("train")]), names)
    model_hash = vae.model_hash()
    common = {"batch_size": batch_size, "progress": progress, "model_hash": model_hash}
    idx, z = split_latents(vae, cache, "train", run, **common)
    y = np.asarray(cache.labels[idx])
    if attributes is None:  # all labels that can give a vector; say which cannot
        pos = y.sum(0)
        one_class = [n for n, p in zip(names, pos) if p == 0 or p == y.shape[0]]
        if one_class:
            warnings.warn(
                f"skipping {len(one_class)} labels with only one class in the train split: "
                f"{', '.join(one_class)}",
                stacklevel=2,
            )
        attributes = [n for n in names if n not in one_class and n not in (condition or [])]
        if not attributes:
            raise DataError(f"no label of {cache.path} has both classes in its train split")
    provenance = {
        "label_source": label_source or str(cache.meta.get("source", cache.path)),
        "model_hash": model_hash,
        "config_hash": vae.config.config_hash(),
        "data": str(cache.path),
        "data_key": data_key(cache),
    }
    if method == "best" and condition:  # held fixed, as asked: the conditional method
        plans = {"conditional": ("mean", condition)}
    elif method == "best":  # each candidate on its own
        plans = {m: (m, None) for m in BEST_OF}
    else:
        plans = {method: (method, condition)}
    fitted = {
        m: _as_method(
            VectorBank.from_estimator(
                fit_method(vae, how, z, y, names, attributes, cond), **provenance
            ),
            m,
        )
        for m, (how, cond) in plans.items()
    }
    held = _heldout_split(cache)
    if held is None:  # no held-out images: judge on the fitting images and say so
        held_idx, held_z = idx, z
    else:
        held_idx, held_z = split_latents(vae, cache, held, run, **common)
    held_y = np.asarray(cache.labels[held_idx])
    if judge is None and judge_factory is not None and held is not None:
        judge = judge_factory()  # only now: a typo or a bad label fails before it trains
    judge = judge if held is not None else None
    split = (cache, names, held_idx, held_z, held_y, z, y)
    opts = {"blend": blend, "n_faces": n_faces, "progress": progress}
    calibrated = {m: _calibrated(vae, b, judge, *split, **opts) for m, b in fitted.items()}
    banks = {m: bank for m, (bank, _) in calibrated.items()}
    bank = _best_of(banks) if len(banks) > 1 else next(iter(banks.values()))
    if len(banks) > 1 and judge is not None:
        # the methods' strengths were read off the faces their success was compared on, so the
        # winner's is optimistic (it won partly by luck on those faces): measure the chosen
        # vectors again, on other faces of the split where it has them
        rows = next(iter(calibrated.values()))[1]  # every method edited the same faces
        chosen = bank.metadata["methods"]
        raw = VectorBank({n: fitted[chosen[n]][n] for n in bank.names},
                         metadata=bank.metadata)  # fmt: skip
        # and on more of them: the final step is read off a larger draw, so it is less lucky
        confirm = {**opts, "n_faces": max(n_faces, confirm_faces)}
        again, _ = _calibrated(vae, raw, judge, *split, **confirm, seed=1, avoid=rows)
        meta, seen = again.metadata, bank.metadata["calibration"]
        for name, record in meta["calibration"].items():
            first = seen[name]
            record["chosen_on"] = {  # what the choice saw: success and leakage at +/-1
                d: {k: first[d][k] for k in ("success_at_1", "leakage_at_1")}
                for d in ("add", "remove")
                if first.get(d)
            }
        bank = VectorBank({n: again[n] for n in again.names}, metadata=meta,
                          footprints=again.footprints)  # fmt: skip
    found = [g for g in found if any(a in bank for a in g)]
    if found and judge is not None and blend == "local":
        bank = fit_swaps(vae, bank, judge, cache, names, held_idx, held_z, held_y, z, y, found,
                         n_faces=max(n_faces, confirm_faces), progress=progress)  # fmt: skip
    if readers is not None and judge is not None and blend == "local":
        bank = _with_holds(vae, bank, judge, cache, names, held_idx, held_z, held_y, y, readers,
                           n_faces=max(n_faces, confirm_faces), progress=progress)  # fmt: skip
    bank, report = _reported(bank, held_z, held_y, names, y)
    if held is None:
        report.notes["_split"] = "no valid or test images: AUC measured on the fitting images"
    return bank, report


def _reported(
    bank: VectorBank, held_z: np.ndarray, held_y: np.ndarray, names: list[str], y: np.ndarray
) -> tuple[VectorBank, Report]:
    """``bank`` judged on the held-out latents (:func:`quality_report`), with its calibration
    problems; flagged vectors have their problems saved in the bank's metadata (an edit with
    one of them says so)."""
    report = quality_report(bank, None, held_z, held_y, names, train_labels=y)
    for name, record in bank.metadata.get("calibration", {}).items():
        found = calibration_problems(record)
        if found:
            report.problems[name] = [*report.problems.get(name, []), *found]
    if report.flagged:
        meta = bank.metadata
        meta["problems"] = {n: list(report.problems[n]) for n in report.flagged}
        bank = VectorBank({n: bank[n] for n in bank.names}, metadata=meta,
                          footprints=bank.footprints, **_swaps_of(bank))  # fmt: skip
    return bank, report


def recalibrate_vectors(
    vae: ConceptVAE,
    bank: VectorBank,
    cache: PreparedCache,
    run: str | os.PathLike | None = None,
    *,
    judge: Any,
    attributes: list[str] | None = None,
    blend: str = "local",
    n_faces: int = CONFIRM_FACES,
    batch_size: int = 256,
    progress: bool = True,
    min_accuracy: float = 0.90,
    keep_longer: bool = False,
) -> tuple[VectorBank, Report]:
    """``bank``'s vectors with their directions kept and strength 1 measured again on
    ``cache``'s held-out split by ``judge`` (trained on its labels): for photos of another
    style, where strengths calibrated on the training faces fall short (``conceptvae vectors
    --recalibrate-only``). Footprints (on ``cache``'s train faces), removal scales and redraws
    are measured again too, on up to ``n_faces`` held-out faces per direction.

    ``attributes``: the vectors to recalibrate (default: every vector of ``bank`` that
    ``cache`` labels and ``judge`` sees). Returns only those, as a bank with ``bank``'s
    provenance and swaps (for :func:`merge_banks`; their holds are chosen again by the
    caller), and their report on the held-out split. Each record's ``unit`` is strength 1's
    length in ``bank``'s strengths (2.0: the new strength 1 is twice the old one) and
    ``recalibrated_on`` names the data.

    ``keep_longer``: a direction's new strength 1 is never a shorter step than its old one
    (the new one's record says ``at_least``), and a longer one only as long as its leakage
    stays within ``LABEL_FREE_LEAK`` of the old step's (``leak_capped``): for labels a judge gave
    (:func:`~conceptvae.evaluation.judge.thresholds_set_on`), whose verdicts can see an
    attribute where there is only the style's stroke; a judge trained on the new style's
    own labels needs no such floor."""
    names = list(cache.attr_names)
    if not names:
        raise DataError(f"{cache.path} has no labels: recalibrating strengths needs labelled "
                        "images")  # fmt: skip
    seen = [n for n in judge.judged(min_accuracy) if n in names]
    if attributes is None:
        todo = [n for n in bank.names if n in seen]
        if not todo:
            raise VectorError(
                f"no vector of the bank is a label of {cache.path} that its judge sees (balanced "
                f"accuracy >= {min_accuracy:.2f}): nothing to recalibrate"
            )
    else:
        todo = [names[_resolve(a, names, "--attributes")] for a in attributes]
        for a in todo:
            if a not in bank:
                raise VectorError(f"the bank has no vector of {a}: fit it first "
                                  "(conceptvae vectors RUN DATA --attributes ...)")  # fmt: skip
            if a not in seen:
                acc = judge.accuracy.get(a)
                raise VectorError(
                    f"the judge of {cache.path} cannot see {a} (balanced accuracy "
                    f"{'n/a' if acc is None else f'{acc:.2f}'} < {min_accuracy:.2f}): its "
                    "strength cannot be recalibrated there; leave it out of --attributes"
                )
    held_idx, held_z = _heldout_latents(vae, cache, run, "recalibrate strengths", batch_size,
                                        progress)  # fmt: skip
    held_y = np.asarray(cache.labels[held_idx])
    common = {"batch_size": batch_size, "progress": progress, "model_hash": vae.model_hash()}
    idx, z = split_latents(vae, cache, "train", run, **common)
    y = np.asarray(cache.labels[idx])
    least = None
    if keep_longer:  # the old strength 1 is the raw vector (add) and its removal scale
        least = {n: {"add": 1.0, "remove": bank.removal_scale(n)} for n in todo}
    cal = calibrate(
        vae, judge, {n: bank[n] for n in todo}, faces=cache.batch, held_idx=held_idx,
        held_z=held_z, held_labels=held_y, names=names, train_z=z, train_labels=y, blend=blend,
        n_faces=n_faces, progress=progress, min_accuracy=min_accuracy, least=least,
        leak_budget=LABEL_FREE_LEAK if keep_longer else None,
    )  # fmt: skip
    meta = bank.metadata
    before = meta.get("calibration", {})
    for n in todo:
        record = cal["calibration"][n]
        record["recalibrated_on"] = str(cache.path)
        if "labels_from" in cache.meta:
            record["labels_from"] = cache.meta["labels_from"]
        if "swaps" in (before.get(n) or {}):  # the swaps are kept, with what they measured
            record["swaps"] = before[n]["swaps"]
    meta["calibration"] = json_safe(cal["calibration"])
    meta["removal_scale"] = cal["removal_scale"]
    meta["norms"] = {n: float(np.linalg.norm(v)) for n, v in cal["vectors"].items()}
    meta.pop("problems", None)  # found again below, for these vectors on these faces
    swaps = {n: r for n, r in bank.swaps.items() if n in todo}
    fps = {n: r for n, r in bank.swap_footprints.items() if n in todo}
    new = VectorBank(cal["vectors"], metadata=meta, footprints=cal["footprints"],
                     groups=bank.groups, swaps=swaps, swap_footprints=fps)  # fmt: skip
    return _reported(new, held_z, held_y, names, y)


def judge_labelled(
    cache: PreparedCache,
    judge: Any,
    bank: VectorBank,
    *,
    min_accuracy: float = 0.90,
    progress: bool = True,
) -> tuple[PreparedCache, Any, dict[str, str]]:
    """Unlabelled photos labelled by ``judge`` (the one that calibrated ``bank``), for
    :func:`recalibrate_vectors` with ``keep_longer``: its thresholds are set again on the
    photos (:func:`~conceptvae.evaluation.judge.thresholds_set_on`, with ``bank``'s class
    counts as the shares where it was trained), and each photo gets its verdict for every
    attribute it still tells apart. Returns the relabelled cache (in memory), that judge and,
    per attribute it no longer tells apart, why."""
    from conceptvae.evaluation.judge import judge_logits, thresholds_set_on

    logits = judge_logits(judge, cache, progress=progress)
    shares = {
        n: c[1] / (c[0] + c[1])
        for n, c in (bank.metadata.get("counts") or {}).items()
        if isinstance(c, (list, tuple)) and len(c) == 2 and c[0] + c[1] > 0
    }
    where = str(cache.path)
    adapted, why = thresholds_set_on(judge, logits, shares=shares, min_accuracy=min_accuracy,
                                     where=where)  # fmt: skip
    seen = adapted.judged(min_accuracy)
    if not seen:
        raise DataError(
            f"{where} has no labels, and the judge tells no attribute apart on its photos "
            f"(its thresholds set there): label the photos (--labels) to recalibrate"
        )
    cols = [adapted.names.index(n) for n in seen]
    labels = adapted.verdicts(logits)[:, cols].numpy()
    source = f"the judge's verdicts, its thresholds set on {where}"
    return cache.relabelled(labels, seen, source), adapted, why


def _as_method(bank: VectorBank, method: str) -> VectorBank:
    """``bank`` labelled ``steered`` when that is the plan: it fits as ``orthogonal``. Other
    plans keep the estimator's own label (a base with ``--condition`` says ``conditional``)."""
    if method != "steered":
        return bank
    meta = bank.metadata
    meta["method"] = method
    return VectorBank({n: bank[n] for n in bank.names}, metadata=meta, footprints=bank.footprints)


def _best_of(banks: dict[str, VectorBank]) -> VectorBank:
    """Per attribute, the method whose calibrated vector works (both directions reach the
    target on the valid split) with the least leakage at +/-1; failing that, the one with the
    best success. The bank's metadata says which method made each vector."""

    def score(record: dict[str, Any]) -> tuple:
        dirs = [record[d] for d in ("add", "remove") if record.get(d)]
        if record.get("scale") != "judge" or not dirs:
            return (0, 0.0, 0.0)
        reached = all(r["reached"] for r in dirs)
        leak = float(np.mean([r["leakage_at_1"] or 0.0 for r in dirs]))
        success = min(r["success_at_1"] or 0.0 for r in dirs)
        return (1, -leak, success) if reached else (0, success, -leak)

    first = next(iter(banks.values()))
    vectors, footprints, chosen = {}, {}, {}
    for name in first.names:
        cal = {m: b.metadata["calibration"][name] for m, b in banks.items()}
        best = max(banks, key=lambda m: score(cal[m]))
        chosen[name] = best
        vectors[name] = banks[best][name]
        footprints[name] = banks[best].footprints[name]
    meta = first.metadata
    meta["method"] = "best"
    meta["methods"] = chosen
    for key in ("calibration", "removal_scale", "norms", "counts", "effective_counts",
                "coverage", "confounders", "preserved"):  # fmt: skip
        meta[key] = {
            n: banks[m].metadata.get(key, {})[n]
            for n, m in chosen.items()
            if n in banks[m].metadata.get(key, {})
        }
    return VectorBank(vectors, metadata=meta, footprints=footprints)


def _calibrated(
    vae, fitted, judge, cache, names, held_idx, held_z, held_y, z, y, *, blend, n_faces,
    progress, seed=0, avoid=None,
) -> tuple[VectorBank, dict]:  # fmt: skip
    """``fitted`` put on the calibrated scale (the latent scale without a judge), with
    footprints, removal scales and the calibration record in its metadata; and the held-out
    rows each direction was measured on (``calibrate``'s ``probe_rows``)."""
    if judge is None:  # a judge that sees nothing: every vector gets the latent scale
        judge = _BlindJudge()
    cal = calibrate(
        vae, judge, {n: fitted[n] for n in fitted.names},
        faces=cache.batch, held_idx=held_idx, held_z=held_z, held_labels=held_y, names=names,
        train_z=z, train_labels=y, blend=blend, n_faces=n_faces, seed=seed, avoid=avoid,
        progress=progress,
    )  # fmt: skip
    meta = fitted.metadata
    meta["calibration"] = json_safe(cal["calibration"])
    meta["removal_scale"] = cal["removal_scale"]
    meta["norms"] = {n: float(np.linalg.norm(v)) for n, v in cal["vectors"].items()}
    bank = VectorBank(cal["vectors"], metadata=meta, footprints=cal["footprints"])
    return bank, cal["probe_rows"]


def bank_calibration(bank: VectorBank, readers: Readers | None = None) -> dict[str, Any]:
    """A bank as :func:`conceptvae.calibration.calibrate` returns its vectors: ``vectors``,
    ``removal_scale``, ``footprints`` and the ``calibration`` records (what
    :func:`~conceptvae.calibration.measure_edits` and
    :func:`~conceptvae.calibration.choose_redraws` read); with its ``swaps``, their
    ``swap_footprints`` and ``rivals`` (:meth:`VectorBank.rivals`) when it has any, and the
    ``readers`` its holds use (:class:`conceptvae.hold.Readers`; None: edits hold nothing)."""
    swaps = bank.swaps
    return {
        "vectors": {n: bank[n] for n in bank.names},
        "removal_scale": {n: bank.removal_scale(n) for n in bank.names},
        "footprints": bank.footprints,
        "calibration": bank.metadata.get("calibration", {}),
        "swaps": swaps,
        "swap_footprints": bank.swap_footprints,
        "rivals": bank.rivals,
        "readers": readers,
    }


def resolve_groups(
    groups: list[list[str]] | None, labels: np.ndarray, names: list[str]
) -> list[tuple[str, ...]]:
    """The exclusive groups to fit swaps for: ``groups`` checked (VectorError names the
    overlapping pair), or, when None, the default ones these labels have (the hair colours)."""
    if groups is None:
        return default_groups(labels, names)
    return [check_group(labels, names, g, "--exclusive") for g in groups]


@torch.inference_mode()
def calibrate_swaps(
    vae: ConceptVAE,
    judge: Any,
    cache: PreparedCache,
    names: list[str],
    held_idx: np.ndarray,
    held_z: np.ndarray,
    held_y: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    groups: list[tuple[str, ...]],
    labels: set[str],
    *,
    n_faces: int = CONFIRM_FACES,
    progress: bool = True,
) -> dict[str, Any]:
    """The part of :func:`fit_swaps` that does not depend on the bank, so that several banks
    of one model (``evaluate``'s methods) share it: per group its classifier, and per label of
    ``labels`` in it and rival ``R``, the swap calibrated on up to ``n_faces`` held-out faces
    that show ``R`` (or why not: too few faces). Returns ``{"classifiers": [...], "tried":
    {A: {R: {"cal": calibrate's output, "edited": the held-out rows it edited} or {"kept":
    False, "n_faces", "reason"}}}}``."""
    classifiers, tried = [], {}
    todo = [a for members in groups for a in members if a in labels]
    bar = tqdm(total=len(todo), desc="swaps", unit="label", disable=not progress, leave=False)
    with bar:
        for members in groups:
            classifiers.append(GroupClassifier.fit(z, y, names, members))
            found = swap_vectors(z, y, names, members, min_faces=MIN_SWAP_FACES)
            for a in members:
                if a not in labels:
                    continue
                bar.update(1)
                t = names.index(a)
                for r, u in found.get(a, {}).items():
                    rows = np.flatnonzero((held_y[:, names.index(r)] == 1) & (held_y[:, t] == 0))
                    if rows.size < MIN_SWAP_FACES:
                        tried.setdefault(a, {})[r] = {
                            "kept": False,
                            "n_faces": int(rows.size),
                            "reason": f"only {rows.size} held-out faces show {r}",
                        }
                        continue
                    cal = calibrate(
                        vae, judge, {a: u}, faces=cache.batch, held_idx=held_idx[rows],
                        held_z=held_z[rows], held_labels=held_y[rows], names=names, train_z=z,
                        train_labels=y, n_faces=n_faces, seed=2, progress=False,
                    )  # fmt: skip
                    if cal["calibration"][a].get("add") is not None:
                        edited = rows[cal["probe_rows"][a]["add"]]
                        tried.setdefault(a, {})[r] = {"cal": cal, "edited": edited}
    return {"classifiers": classifiers, "tried": tried}


@torch.inference_mode()
def fit_swaps(
    vae: ConceptVAE,
    bank: VectorBank,
    judge: Any,
    cache: PreparedCache,
    names: list[str],
    held_idx: np.ndarray,
    held_z: np.ndarray,
    held_y: np.ndarray,
    z: np.ndarray,
    y: np.ndarray,
    groups: list[tuple[str, ...]],
    *,
    n_faces: int = CONFIRM_FACES,
    progress: bool = True,
    calibrated: dict[str, Any] | None = None,
) -> VectorBank:
    """``bank`` with swaps for its exclusive ``groups`` (:mod:`attributes.groups`).

    Per group, a classifier of which label a latent shows is fitted on the train split. Per
    label ``A`` of a group with a judge-calibrated vector and every rival ``R``, the swap
    ``mean(z | A) - mean(z | R, not A)`` is calibrated (the local blend) on up to ``n_faces``
    held-out faces that show ``R``, and the bank's own vector is measured at its strength 1
    on the same faces; the swap is kept where it adds ``A`` to at least ``SWAP_GAIN`` more of
    them. Each try is recorded in the calibration record of ``A`` (``swaps``: per rival its
    success and leakage at 1, the plain vector's, and whether it was kept). Vectors,
    strengths and footprints of the bank stay as they are. ``calibrated``:
    :func:`calibrate_swaps`' output for these groups, when it is already at hand.
    """
    meta = bank.metadata
    records = meta.get("calibration", {})
    wanted = {a for members in groups for a in members if a in bank.footprints
              and (records.get(a) or {}).get("scale") == "judge"}  # fmt: skip
    if calibrated is None:
        calibrated = calibrate_swaps(
            vae, judge, cache, names, held_idx, held_z, held_y, z, y, groups, wanted,
            n_faces=n_faces, progress=progress,
        )  # fmt: skip
    judged = [n for n in judge.judged(0.90) if n in names]
    swaps, fps = {}, {}
    for a in (a for members in groups for a in members if a in wanted):
        plain = torch.as_tensor(np.array(bank[a], dtype=np.float32))
        w_plain = footprint_weight(bank.footprints[a])
        g_plain = redraw_of(records, a, "add")
        others = independent_columns(judge, names, y, a, judged)
        tried: dict[str, Any] = {}
        for r, c in calibrated["tried"].get(a, {}).items():
            if "cal" not in c:  # too few faces show the rival
                tried[r] = c
                continue
            cal, edited = c["cal"], c["edited"]
            add = cal["calibration"][a]["add"]
            probe = EditProbe(
                vae, judge, cache.batch(held_idx[edited]),
                torch.from_numpy(held_z[edited]).float(), target=judge.names.index(a),
                others=others, adding=True, blend="local",
            )  # fmt: skip
            before = probe.at(plain, w_plain, g_plain)
            kept = add["success_at_1"] >= before["success"] + SWAP_GAIN
            tried[r] = {
                "kept": bool(kept),
                "n_faces": int(edited.size),
                "unit": cal["calibration"][a]["unit"],
                "add": add,
                "plain": {"success_at_1": before["success"], "leakage_at_1": before["leakage"]},
            }
            if kept:
                swaps.setdefault(a, {})[r] = cal["vectors"][a]
                fps.setdefault(a, {})[r] = cal["footprints"][a]
        if tried:
            records[a] = {**records[a], "swaps": json_safe(tried)}
    meta["calibration"] = records
    flagged = meta.get("problems") or {}
    for a in set(swaps) & set(flagged):  # a flag saying adding fails: now with its swaps
        said = {p.split(":")[0]: p for p in calibration_problems(records[a])}
        flagged[a] = [said.get(p.split(":")[0], p) for p in flagged[a]]
    used = [g for g in calibrated["classifiers"] if any(a in g.members for a in swaps)]
    # the bank's own swaps of groups not refitted here stay, with their classifiers
    refit = {a for g in groups for a in g}
    for g in bank.groups:
        if not set(g.members) & refit:
            used.append(g)
            for a in set(g.members) & set(bank.swaps):
                swaps[a], fps[a] = bank.swaps[a], bank.swap_footprints.get(a, {})
    return VectorBank({n: bank[n] for n in bank.names}, metadata=meta,
                      footprints=bank.footprints, groups=used, swaps=swaps,
                      swap_footprints=fps)  # fmt: skip


def add_swaps(
    vae: ConceptVAE,
    bank: VectorBank,
    judge: Any,
    cache: PreparedCache,
    run: str | os.PathLike | None = None,
    *,
    groups: list[list[str]] | None = None,
    n_faces: int = CONFIRM_FACES,
    batch_size: int = 256,
    progress: bool = True,
) -> VectorBank:
    """:func:`fit_swaps` for a bank already fitted (``conceptvae vectors --swaps-only``):
    the latents of the train and held-out splits (cached in ``run``), the groups
    (:func:`resolve_groups`), and the swaps, with the bank's vectors left as they are."""
    names = list(cache.attr_names)
    held = _heldout_split(cache)
    if held is None:
        raise DataError(f"{cache.path} has no valid or test split to calibrate swaps on")
    common = {"batch_size": batch_size, "progress": progress, "model_hash": vae.model_hash()}
    idx, z = split_latents(vae, cache, "train", run, **common)
    y = np.asarray(cache.labels[idx])
    found = resolve_groups(groups, y, names)
    if not found:
        raise VectorError(
            f"the labels of {cache.path} have no exclusive group: name one with --exclusive "
            "(labels a face shows at most one of, such as hair colours)"
        )
    h_idx, h_z = split_latents(vae, cache, held, run, **common)
    h_y = np.asarray(cache.labels[h_idx])
    return fit_swaps(vae, bank, judge, cache, names, h_idx, h_z, h_y, z, y, found,
                     n_faces=n_faces, progress=progress)  # fmt: skip


def _heldout_latents(
    vae: ConceptVAE, cache: PreparedCache, run: Any, what: str, batch_size: int, progress: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and latents of the held-out split (cached in ``run``); none is an error saying
    what it was needed for."""
    held = _heldout_split(cache)
    if held is None:
        raise DataError(f"{cache.path} has no valid or test split to {what} on")
    common = {"batch_size": batch_size, "progress": progress, "model_hash": vae.model_hash()}
    return split_latents(vae, cache, held, run, **common)


def fit_readers(
    vae: ConceptVAE,
    cache: PreparedCache,
    run: str | os.PathLike | None = None,
    *,
    batch_size: int = 256,
    progress: bool = True,
) -> Readers:
    """The labels' readers (:class:`conceptvae.hold.Readers`) fitted on the train split's
    posterior means (cached in ``run``, as :func:`fit_vectors` caches them)."""
    common = {"batch_size": batch_size, "progress": progress, "model_hash": vae.model_hash()}
    idx, z = split_latents(vae, cache, "train", run, **common)
    return Readers.fit(z, np.asarray(cache.labels[idx]), list(cache.attr_names))


def _with_holds(
    vae: ConceptVAE, bank: VectorBank, judge: Any, cache: PreparedCache, names: list[str],
    held_idx: np.ndarray, held_z: np.ndarray, held_y: np.ndarray, y: np.ndarray,
    readers: Readers, *, n_faces: int, progress: bool, pushes: Sequence[float] = (),
) -> VectorBank:  # fmt: skip
    """``bank`` with each calibrated vector's hold chosen on the held-out faces (``pushes``:
    :func:`conceptvae.hold.choose_holds`')."""
    cal = bank_calibration(bank)
    if not cal["calibration"]:
        return bank
    meta = bank.metadata
    meta["calibration"] = json_safe(
        choose_holds(
            vae, judge, cal, readers, faces=cache.batch, held_idx=held_idx, held_z=held_z,
            held_labels=held_y, names=names, train_labels=y, n_faces=n_faces,
            progress=progress, pushes=pushes,
        )
    )  # fmt: skip
    return VectorBank({n: bank[n] for n in bank.names}, metadata=meta,
                      footprints=bank.footprints, **_swaps_of(bank))  # fmt: skip


def add_holds(
    vae: ConceptVAE,
    bank: VectorBank,
    judge: Any,
    cache: PreparedCache,
    readers: Readers,
    run: str | os.PathLike | None = None,
    *,
    n_faces: int = CONFIRM_FACES,
    batch_size: int = 256,
    progress: bool = True,
    pushes: Sequence[float] = (),
) -> VectorBank:
    """The holds of a bank already fitted (``conceptvae vectors --holds-only``), chosen on the
    held-out split; its vectors, strengths, footprints and swaps stay as they are.
    ``pushes``: the longer held steps to try as well (``vectors --push``:
    :data:`conceptvae.hold.HOLD_PUSHES`)."""
    names = list(cache.attr_names)
    h_idx, h_z = _heldout_latents(vae, cache, run, "choose holds", batch_size, progress)
    y = np.asarray(cache.labels[cache.split("train")])
    return _with_holds(vae, bank, judge, cache, names, h_idx, h_z,
                       np.asarray(cache.labels[h_idx]), y, readers, n_faces=n_faces,
                       progress=progress, pushes=pushes)  # fmt: skip


def with_redraws(
    vae: ConceptVAE,
    bank: VectorBank,
    judge: Any,
    cache: PreparedCache,
    run: str | os.PathLike | None = None,
    *,
    n_faces: int = 200,
    batch_size: int = 256,
    progress: bool = True,
) -> VectorBank:
    """``bank`` with each calibrated vector's redraw chosen on the held-out split
    (:func:`conceptvae.calibration.choose_redraws`), for banks calibrated before it was:
    vectors, strengths and footprints stay as they are."""
    names = list(cache.attr_names)
    h_idx, h_z = _heldout_latents(vae, cache, run, "choose redraws", batch_size, progress)
    meta = bank.metadata
    cal = bank_calibration(bank)
    meta["calibration"] = json_safe(
        choose_redraws(
            vae, judge, cal, faces=cache.batch, held_idx=h_idx, held_z=h_z,
            held_labels=np.asarray(cache.labels[h_idx]), names=names,
            train_labels=np.asarray(cache.labels[cache.split("train")]),
            n_train=int(cache.split("train").size), n_faces=n_faces, progress=progress,
        )
    )  # fmt: skip
    return VectorBank(cal["vectors"], metadata=meta, footprints=bank.footprints,
                      **_swaps_of(bank))  # fmt: skip


class _BlindJudge:
    """Stands in for a judge when there is none: it sees no attribute."""

    names: list[str] = []
    accuracy: dict[str, float] = {}

    def judged(self, min_accuracy: float = 0.0) -> list[str]:
        return []


_PER_VECTOR = ("effective_counts", "coverage", "confounders", "preserved", "calibration",
               "problems")  # fmt: skip


def merge_banks(old: VectorBank | None, new: VectorBank) -> VectorBank:
    """``new``'s vectors added to ``old`` (same names replaced) when both belong to one model.

    Per-vector provenance is kept in ``metadata["vectors"]``: method, label source, class
    counts and norm of each vector, whichever fit made it.
    """
    meta = new.metadata
    info = {
        name: {
            "method": meta.get("methods", {}).get(name, meta.get("method")),
            "label_source": meta.get("label_source"),
            "counts": meta.get("counts", {}).get(name),
            "norm": meta.get("norms", {}).get(name),
            **({"condition": meta["condition"]} if "condition" in meta else {}),
            **{
                key: meta[key][name]
                for key in _PER_VECTOR
                if isinstance(meta.get(key), dict) and name in meta[key]
            },
        }
        for name in new.names
    }
    if old is None or old.metadata.get("model_hash") != meta.get("model_hash"):
        return VectorBank(
            {n: new[n] for n in new.names},
            metadata={**meta, "vectors": info},
            footprints=new.footprints,
            **_swaps_of(new),
        )
    # a vector replaced keeps its place in the bank; new names come after the old ones
    vectors = {n: new[n] if n in new else old[n] for n in old.names}
    vectors.update({n: new[n] for n in new.names if n not in vectors})
    old_meta = old.metadata
    old_info = old_meta.get("vectors", {})
    for n in old.names:  # a bank saved straight from fit_vectors has no per-vector entry
        entry = old_info.get(n) or {
            "method": old_meta.get("methods", {}).get(n, old_meta.get("method")),
            "label_source": old_meta.get("label_source"),
            "counts": old_meta.get("counts", {}).get(n),
            "norm": old_meta.get("norms", {}).get(n),
        }
        # what edits read is the bank's own metadata, which --swaps-only and --holds-only
        # update in place: the per-vector copy follows it, not what the last merge saw
        for k in _PER_VECTOR:
            if isinstance(old_meta.get(k), dict) and n in old_meta[k]:
                entry[k] = old_meta[k][n]
            else:
                entry.pop(k, None)
        old_info[n] = entry
    merged = {**old_info, **info}
    merged = {n: merged[n] for n in vectors if n in merged}
    out_meta = {**meta, "vectors": merged}
    out_meta["counts"] = {n: v.get("counts") for n, v in merged.items()}
    out_meta["norms"] = {n: v.get("norm") for n, v in merged.items()}
    for key in _PER_VECTOR:
        out_meta[key] = {n: v[key] for n, v in merged.items() if key in v}
    removal = {n: r for n, r in old.metadata.get("removal_scale", {}).items() if n not in new}
    removal.update(meta.get("removal_scale", {}))
    out_meta["removal_scale"] = {n: r for n, r in removal.items() if n in vectors}
    if not out_meta["removal_scale"]:
        del out_meta["removal_scale"]
    footprints = {n: f for n, f in old.footprints.items() if n not in new}
    footprints.update(new.footprints)
    return VectorBank(vectors, metadata=out_meta, footprints=footprints, **_swaps_of(new, old))


def _swaps_of(new: VectorBank, old: VectorBank | None = None) -> dict[str, Any]:
    """``VectorBank``'s swap arguments for a merge: ``new``'s swaps, and ``old``'s for names
    ``new`` has no vector of (with their groups, where ``new`` has none of the same labels)."""
    groups, swaps, fps = new.groups, new.swaps, new.swap_footprints
    if old is not None:
        have = {frozenset(g.members) for g in groups}
        for g in old.groups:
            if frozenset(g.members) not in have:
                groups.append(g)
        # a group whose classifier is new was refitted: its old swaps would read another one
        refitted = [g for g in new.groups if not any(_same_classifier(g, o) for o in old.groups)]
        for n, rs in old.swaps.items():
            if n in new:
                continue
            if any(n in g.members for g in refitted):
                continue
            swaps[n], fps[n] = rs, old.swap_footprints.get(n, {})
    return {"groups": groups, "swaps": swaps, "swap_footprints": fps}


def _same_classifier(a: GroupClassifier, b: GroupClassifier) -> bool:
    return (
        a.members == b.members
        and np.array_equal(a.weight, b.weight)
        and np.array_equal(a.bias, b.bias)
    )


def load_bank(run: str | os.PathLike) -> VectorBank | None:
    """The bank saved in ``run``, or None when there is none."""
    if not (Path(run) / "vectors.json").is_file():
        return None
    return VectorBank.load(run)


def save_report(report: Report, run: str | os.PathLike, title: str | None = None) -> list[Path]:
    """Write the report's text, JSON and cosine heatmap into ``run``; returns the paths."""
    run = Path(run)
    atomic_write_text(run / REPORT_TEXT, report.to_text() + "\n")
    atomic_write_json(run / REPORT_JSON, report.to_dict())
    report.cosine_heatmap(run / HEATMAP, title=title)
    return [run / REPORT_TEXT, run / REPORT_JSON, run / HEATMAP]


def describe_bank(bank: VectorBank) -> str:
    """A short table of a saved bank: name, method, norm, class counts."""
    meta = bank.metadata
    info: dict[str, Any] = meta.get("vectors", {})
    lines = [
        f"{len(bank)} vectors, latent dim {bank.dim}, model {meta.get('model_hash', '?')}",
        f"{'name':<22} {'method':<12} {'norm':>7} {'negatives':>10} {'positives':>10}",
    ]
    for name in bank.names:
        v = info.get(name, {})
        counts = v.get("counts") or meta.get("counts", {}).get(name) or ["?", "?"]
        method = v.get("method") or meta.get("method", "?")
        norm = float(np.linalg.norm(bank[name]))
        lines.append(f"{name:<22} {method:<12} {norm:>7.3f} {counts[0]:>10} {counts[1]:>10}")
    return "\n".join(lines)


def _redraws(record: dict[str, Any]) -> str:
    """``"0.25/1"``: the redraw chosen adding / removing (``-`` where none was chosen)."""
    out = []
    for d in ("add", "remove"):
        g = (record.get(d) or {}).get("redraw")
        out.append("-" if g is None else f"{g:g}")
    return "/".join(out)


def describe_calibration(bank: VectorBank) -> str:
    """What strength 1 does for each vector of ``bank``: its scale (judge-calibrated or
    latent), and adding / removing at +1 / -1 on held-out faces: success, leakage, the
    strengths reaching 90% and 95%; the share of the face its footprint covers and how much of
    the decoded face the local blend redraws there, adding / removing."""
    cal: dict[str, Any] = bank.metadata.get("calibration", {})
    if not cal:
        return "no calibration recorded: strengths are on the scale the vectors were fitted on"
    lines = [
        "strength 1 is recommended for every vector (`--edit NAME` with no number); on the judge "
        "scale +1 adds it to 98% of held-out faces (96% or more where the last faces would cost "
        "more leakage than they gain) and -1 removes it",
        f"{'name':<20} {'scale':<6} {'add: success':>12} {'leak':>6} {'90%':>5} {'95%':>5}  "
        f"{'remove: success':>15} {'leak':>6} {'90%':>5} {'95%':>5} {'area':>5} {'redraw':>9}",
    ]

    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for name in bank.names:
        c = cal.get(name)
        if c is None:
            continue
        cells = []
        for d in ("add", "remove"):
            r = c.get(d) or {}
            cells += [
                f(r.get("success_at_1"), ".0%"),
                f(r.get("leakage_at_1"), ".1%"),
                f(r.get("strength_90"), ".2f"),
                f(r.get("strength_95"), ".2f"),
            ]
        lines.append(
            f"{name:<20} {c.get('scale', '?'):<6} {cells[0]:>12} {cells[1]:>6} {cells[2]:>5} "
            f"{cells[3]:>5}  {cells[4]:>15} {cells[5]:>6} {cells[6]:>5} {cells[7]:>5} "
            f"{f(c.get('footprint_area'), '.0%'):>5} {_redraws(c):>9}"
        )
    latent = [n for n in bank.names if cal.get(n, {}).get("scale") == "latent"]
    if latent:
        lines.append(
            f"uncalibrated (latent scale, strength 1 = 1.5 x the class-mean gap): "
            f"{', '.join(latent)}"
        )
    again = [n for n in bank.names if cal.get(n, {}).get("recalibrated_on")]
    if again:  # the unit is then strength 1's length in the strengths they had
        lines.append(
            "recalibrated (strength 1 now, in the strengths they had before): "
            + ", ".join(f"{n} {f(cal[n].get('unit'), '.2f')}x" for n in again)
            + f" on {cal[again[0]]['recalibrated_on']}"
        )
        if "labels_from" in cal[again[0]]:  # no labels: the judge's verdicts, lengthen only
            floored = [
                f"{n} {'+' if d == 'add' else '-'}"
                for n in again
                for d in ("add", "remove")
                if (cal[n].get(d) or {}).get("at_least")
            ]
            lines.append(
                f"  labelled by {cal[again[0]]['labels_from']}; kept at the old strength where "
                f"the new one was shorter: {', '.join(floored) or 'none'}"
            )
    extra = [part for part in (describe_swaps(bank), describe_holds(bank)) if part]
    return "\n".join(lines + extra)


def describe_swaps(bank: VectorBank) -> str:
    """The swaps tried for ``bank``'s exclusive groups: per label and rival, adding at +1 on
    held-out faces showing the rival, with the swap and with the label's own vector, and
    whether the swap was kept. Empty when none were tried."""
    cal: dict[str, Any] = bank.metadata.get("calibration", {})
    rows = [(n, r, t) for n in bank.names for r, t in (cal.get(n, {}).get("swaps") or {}).items()]
    if not rows:
        return ""
    groups = "; ".join(", ".join(g.members) for g in bank.groups) or "none kept"
    lines = [
        f"swaps (exclusive groups: {groups}): adding a label to faces that show another label "
        "of its group, at +1",
        f"{'add':<20} {'to faces with':<20} {'faces':>5} {'swap: success':>13} {'leak':>6} "
        f"{'own vector: success':>19} {'leak':>6}  kept",
    ]

    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    for n, r, t in rows:
        add, plain = t.get("add") or {}, t.get("plain") or {}
        kept = "yes" if t.get("kept") else f"no{' (' + t['reason'] + ')' if 'reason' in t else ''}"
        lines.append(
            f"{n:<20} {r:<20} {t.get('n_faces', 0):>5} {f(add.get('success_at_1'), '.0%'):>13} "
            f"{f(add.get('leakage_at_1'), '.1%'):>6} {f(plain.get('success_at_1'), '.0%'):>19} "
            f"{f(plain.get('leakage_at_1'), '.1%'):>6}  {kept}"
        )
    return "\n".join(lines)


def _hold_kind(hold: dict[str, Any]) -> str:
    """``describe_holds``' last column: no, or yes with what the kept edit does."""
    if not hold.get("kept"):
        return "no"
    what = []
    if hold.get("labels"):
        what.append("firm" if hold.get("margin") is not None else "")
    else:
        what.append("no labels held")
    if hold.get("reach") is not None:
        what.append(f"reach {hold['reach']:g}")
    if (push := record_push(hold)) != 1.0:
        what.append(f"push {push:g}")
    return ", ".join(["yes", *[w for w in what if w]])


def describe_holds(bank: VectorBank) -> str:
    """The holds chosen for ``bank``'s vectors: per vector and direction, at +/-1 on held-out
    faces, the edit held and plain (success, leakage), how many labels it holds and whether
    the hold was kept, and firmly. Empty when none were chosen."""
    cal: dict[str, Any] = bank.metadata.get("calibration", {})
    rows = [(n, d, (cal.get(n, {}).get(d) or {}).get("hold")) for n in bank.names
            for d in ("add", "remove")]  # fmt: skip
    rows = [(n, d, h) for n, d, h in rows if h]
    if not rows:
        return ""
    kept = sum(bool(h.get("kept")) for _, _, h in rows)
    firm = sum(bool(h.get("kept")) and h.get("margin") is not None for _, _, h in rows)
    reach = sum(bool(h.get("kept")) and h.get("reach") is not None for _, _, h in rows)
    push = sum(bool(h.get("kept")) and record_push(h) != 1.0 for _, _, h in rows)
    lines = [
        f"holds: an edit puts back, per face, the free labels its step changed, or stops each "
        f"face where the model reads the target clearly (reach: that many logits past its "
        f"boundary), or both; kept in {kept} of {len(rows)} directions ({firm} firm: also the "
        f"readings it weakened by more than {HOLD_MARGIN:g} logit; {reach} with a reach; "
        f"{push} pushed: a longer step held)",
        f"{'vector':<20} {'dir':<6} {'faces':>5} {'held':>4} {'held: success':>13} {'leak':>6} "
        f"{'plain: success':>14} {'leak':>6}  kept",
    ]
    for n, d, h in rows:
        plain = h.get("plain") or {}
        lines.append(
            f"{n:<20} {d:<6} {h.get('n_faces', 0):>5} {len(h.get('labels', [])):>4} "
            f"{h['success_at_1']:>13.1%} {h['leakage_at_1']:>6.1%} "
            f"{plain.get('success_at_1', 0.0):>14.1%} {plain.get('leakage_at_1', 0.0):>6.1%}  "
            f"{_hold_kind(h)}"
        )
    return "\n".join(lines)

"""Concept vectors for a trained model: encode a dataset, fit, save the bank beside the model.

``conceptvae vectors`` is :func:`fit_vectors` plus printing. The posterior means of a split are
computed once per (model, data) pair and kept in ``RUN/latents/`` (a float32 ``.npy`` per split,
named by a hash of the model's weights and the cache's ``meta.json``), so asking again for other
attributes or another method does not encode the images again.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from attributes.bank import VectorBank
from attributes.errors import VectorError
from attributes.estimators import AttributeVectors, _resolve
from attributes.report import Report, quality_report
from conceptvae._fs import atomic_write, atomic_write_json, atomic_write_text
from conceptvae.data.cache import PreparedCache
from conceptvae.errors import DataError
from conceptvae.model import ConceptVAE

LATENTS_DIR = "latents"
REPORT_TEXT = "vectors_report.txt"
REPORT_JSON = "vectors_report.json"
HEATMAP = "vectors_cosine.png"
METHODS = ("mean", "balanced", "classifier", "conditional")


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


def data_key(cache: PreparedCache) -> str:
    """16 hex digits naming a prepared cache's contents (its meta.json and its length)."""
    meta = (Path(cache.path) / "meta.json").read_bytes()
    return hashlib.sha256(meta + str(len(cache)).encode()).hexdigest()[:16]


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


def make_estimator(
    method: str,
    attributes: list[str] | None = None,
    condition: list[str] | None = None,
) -> AttributeVectors:
    """The estimator the CLI asks for: ``--condition`` with mean/balanced/classifier means the
    conditional method on top of that base."""
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
    return AttributeVectors(method, attributes=attributes)


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
) -> tuple[VectorBank, Report]:
    """Fit concept vectors on the train split's posterior means and judge them on valid/test.

    Returns the new vectors as a bank (provenance in its metadata) and a :class:`Report`
    (held-out AUC, norms, cosines, confounds). Nothing is written except the latent cache.
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
    make_estimator(method, attributes, condition)
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
    est = make_estimator(method, attributes, condition).fit(z, y, names)
    bank = VectorBank.from_estimator(
        est,
        label_source=label_source or str(cache.meta.get("source", cache.path)),
        model_hash=model_hash,
        config_hash=vae.config.config_hash(),
        data=str(cache.path),
        data_key=data_key(cache),
    )
    held = _heldout_split(cache)
    if held is None:  # no held-out images: judge on the fitting images and say so
        held_idx, held_z = idx, z
    else:
        held_idx, held_z = split_latents(vae, cache, held, run, **common)
    report = quality_report(
        bank,
        None,
        held_z,
        np.asarray(cache.labels[held_idx]),
        names,
        train_labels=y,
    )
    if held is None:
        report.notes["_split"] = "no valid or test images: AUC measured on the fitting images"
    return bank, report


def merge_banks(old: VectorBank | None, new: VectorBank) -> VectorBank:
    """``new``'s vectors added to ``old`` (same names replaced) when both belong to one model.

    Per-vector provenance is kept in ``metadata["vectors"]``: method, label source, class
    counts and norm of each vector, whichever fit made it.
    """
    meta = new.metadata
    info = {
        name: {
            "method": meta.get("method"),
            "label_source": meta.get("label_source"),
            "counts": meta.get("counts", {}).get(name),
            "norm": meta.get("norms", {}).get(name),
            **({"condition": meta["condition"]} if "condition" in meta else {}),
        }
        for name in new.names
    }
    if old is None or old.metadata.get("model_hash") != meta.get("model_hash"):
        return VectorBank({n: new[n] for n in new.names}, metadata={**meta, "vectors": info})
    vectors = {n: old[n] for n in old.names if n not in new}
    vectors.update({n: new[n] for n in new.names})
    merged = {**old.metadata.get("vectors", {}), **info}
    merged = {n: merged[n] for n in vectors if n in merged}
    out_meta = {**meta, "vectors": merged}
    out_meta["counts"] = {n: v.get("counts") for n, v in merged.items()}
    out_meta["norms"] = {n: v.get("norm") for n, v in merged.items()}
    return VectorBank(vectors, metadata=out_meta)


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

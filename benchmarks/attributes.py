"""Concept-vector fitting: time per method at CelebA scale, and entanglement on a trained model.

Part 1 (always): fit times of ``AttributeVectors`` for each method on 200,000 synthetic latents
of 128 and of 512 dimensions with 40 correlated labels, against a reference measured in the same
run: the plain numpy loop a notebook would write (boolean-mask means, one label at a time).
Also the peak extra memory of a ``mean`` fit (tracemalloc), beside the size of the latents.

Part 2 (with ``--run RUN --data CACHE``): for a trained model, how entangled each method's
Smiling vector is with Male. From the train split's posterior means it fits every method, then
on the valid split reports Smiling's held-out AUC, the cosine of the Smiling vector with the
(balanced) Male vector, and how far adding the Smiling vector to non-smiling faces moves them
along Male: the mean change of a Male logistic regression's logit, as a share of the gap
between the mean logits of women and men (-100% would turn the average man into a woman).

    python benchmarks/attributes.py [--n 200000] [--dims 128,512] [--run RUN --data CACHE]

Prints tables and writes benchmarks/results/attributes.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

# This file shares its name with the ``attributes`` package: import the package with this
# folder off the path, then put the folder back for ``common``.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from attributes.estimators import AttributeVectors  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine, write_report  # noqa: E402

N_LABELS = 40


def synthetic(n: int, d: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(n, d) float32 latents and (n, 40) labels: 8 independent factors drive correlated labels,
    each label adds its own direction to the latents."""
    rng = np.random.default_rng(seed)
    factors = rng.standard_normal((n, 8)).astype(np.float32)
    mix = rng.standard_normal((8, N_LABELS)).astype(np.float32) * 0.7
    scores = factors @ mix + rng.standard_normal((n, N_LABELS)).astype(np.float32)
    labels = (scores > rng.normal(0.8, 0.6, N_LABELS).astype(np.float32)).astype(np.uint8)
    dirs = rng.standard_normal((N_LABELS, d)).astype(np.float32) / np.sqrt(d)
    z = rng.standard_normal((n, d)).astype(np.float32)
    z += labels.astype(np.float32) @ dirs * 2.0
    return z, labels, [f"A{j:02d}" for j in range(N_LABELS)]


def naive_mean(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """What a notebook does: one label at a time, boolean-mask means."""
    out = np.empty((y.shape[1], z.shape[1]), np.float32)
    for j in range(y.shape[1]):
        pos = y[:, j] == 1
        out[j] = z[pos].mean(0) - z[~pos].mean(0)
    return out


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def part1(n: int, dims: list[int], repeats: int) -> list[dict]:
    rows = []
    for d in dims:
        z, y, names = synthetic(n, d)
        ref = timed(lambda z=z, y=y: naive_mean(z, y), repeats)
        tracemalloc.start()
        AttributeVectors("mean").fit(z, y, names)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        methods = {
            "mean": (AttributeVectors("mean"), repeats),
            "balanced": (AttributeVectors("balanced"), repeats),
            "classifier": (AttributeVectors("classifier"), 1),
            "conditional": (AttributeVectors("conditional", condition=["A00", "A01"]), repeats),
        }
        for method, (est, r) in methods.items():
            seconds = timed(lambda est=est, z=z, y=y, nm=names: est.fit(z, y, nm), r)
            rows.append(
                {
                    "n": n,
                    "dim": d,
                    "method": method,
                    "seconds": seconds,
                    "reference_seconds": ref,
                    "speedup_vs_naive_mean": ref / seconds,
                    "latents_mb": z.nbytes / 2**20,
                    "mean_fit_peak_extra_mb": peak / 2**20 if method == "mean" else None,
                }
            )
    return rows


def part2(run: str, data: str) -> list[dict]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from conceptvae.data.cache import open_cache
    from conceptvae.model import ConceptVAE
    from conceptvae.vectors import split_latents

    vae = ConceptVAE.from_pretrained(run)
    cache = open_cache(data)
    names = list(cache.attr_names)
    tr, z = split_latents(vae, cache, "train", run)
    va, zv = split_latents(vae, cache, "valid", run)
    y, yv = np.asarray(cache.labels[tr]), np.asarray(cache.labels[va])
    s, m = names.index("Smiling"), names.index("Male")
    male = AttributeVectors("balanced", attributes=["Male"]).fit(z, y, names).vectors_[0]
    judge = LogisticRegression(max_iter=1000, class_weight="balanced").fit(z, y[:, m])
    base = zv[yv[:, s] == 0]
    logit0 = judge.decision_function(base)
    d = judge.decision_function(zv)
    gap = d[yv[:, m] == 1].mean() - d[yv[:, m] == 0].mean()  # women -> men, in logits
    keep = [j for j, n in enumerate(names) if 0 < y[:, j].sum() < len(y)]
    sub = [names[j] for j in keep]
    ests = {
        "mean": AttributeVectors("mean", attributes=["Smiling"]),
        "balanced": AttributeVectors("balanced", attributes=["Smiling"]),
        "classifier": AttributeVectors("classifier", attributes=["Smiling"]),
        "conditional (Male)": AttributeVectors(
            "conditional", attributes=["Smiling"], condition=["Male"]
        ),
    }
    rows = []
    for method, est in ests.items():
        v = est.fit(z, y[:, keep], sub).vectors_[0]
        shift = (judge.decision_function(base + v) - logit0).mean() / gap
        rows.append(
            {
                "method": method,
                "auc_smiling": float(roc_auc_score(yv[:, s], zv @ v)),
                "cos_with_male": float(v @ male / np.linalg.norm(v) / np.linalg.norm(male)),
                "male_shift": float(shift),
                "norm": float(np.linalg.norm(v)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dims", default="128,512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run", help="a trained model folder (part 2)")
    ap.add_argument("--data", help="its prepared cache (part 2)")
    ap.add_argument("--out", default=str(HERE / "results/attributes.json"))
    args = ap.parse_args(argv)
    info = machine()
    rows = part1(args.n, [int(d) for d in args.dims.split(",")], args.repeats)
    print(f"fit time, {args.n:,} latents, {N_LABELS} labels (median of {args.repeats})")
    print(f"{'dim':>5} {'method':<12} {'seconds':>8} {'naive mean loop':>16} {'ratio':>7}")
    for r in rows:
        print(
            f"{r['dim']:>5} {r['method']:<12} {r['seconds']:>8.3f} {r['reference_seconds']:>16.3f}"
            f" {r['speedup_vs_naive_mean']:>6.2f}x"
        )
    for r in rows:
        if r["mean_fit_peak_extra_mb"] is not None:
            print(
                f"dim {r['dim']}: mean fit peak extra memory {r['mean_fit_peak_extra_mb']:.1f} MB"
                f" for {r['latents_mb']:.0f} MB of latents"
            )
    entangle = None
    if args.run and args.data:
        entangle = part2(args.run, args.data)
        print("\nSmiling vector vs Male (valid split of the model's data)")
        print(f"{'method':<20} {'AUC':>6} {'cos(Male)':>10} {'Male shift':>11} {'norm':>6}")
        for r in entangle:
            print(
                f"{r['method']:<20} {r['auc_smiling']:>6.3f} {r['cos_with_male']:>+10.3f}"
                f" {r['male_shift']:>+11.1%} {r['norm']:>6.2f}"
            )
    return write_report(
        args.out, "attributes", info, fits=rows, entanglement=entangle, run=args.run
    )


if __name__ == "__main__":
    main()

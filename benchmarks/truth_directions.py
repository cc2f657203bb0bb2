"""How close each method's vector comes to the true direction of its attribute.

    python benchmarks/truth_directions.py synthfaces64 data/s20k64 --judge RUN/judge
    python benchmarks/truth_directions.py runs/heldout data/heldout64 --synth-seed 7 \
        --synth-n 10000 --style ink --judge data/heldout-judge     # the held-out ink set

SynthFaces draws a face from flags, so the true effect of an attribute on a model's latents can
be measured: render train faces with the attribute flipped (exactly as ``prepare`` stores them,
``counterfactual.prepared``), encode both, and average the latent change (added on half of
--faces faces that lack it, removed, with its sign turned, on half that have it). Every method
is then fitted on the model's train latents and labels only, as ``conceptvae vectors`` fits
it, and compared with that truth by cosine. Methods that need the decoder (``steered``) are not
included; the labels-only ones are. Prints a table and writes
benchmarks/results/truth_directions.json (or --out).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METHODS = ("mean", "balanced", "classifier", "adjusted", "orthogonal")


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))


def main(argv: list[str] | None = None) -> None:
    from counterfactual import synth_arguments

    ap = synth_arguments(__doc__.split("\n")[0])
    ap.add_argument("--judge", help="only the attributes this judge passes (default: all drawn)")
    ap.add_argument("--faces", type=int, default=300, help="train faces per attribute")
    ap.add_argument("--out", help="JSON path [default: benchmarks/results/truth_directions.json]")
    args = ap.parse_args(argv)

    import torch
    from common import machine, write_report
    from counterfactual import true_change

    from attributes.estimators import AttributeVectors
    from conceptvae.data.cache import open_cache
    from conceptvae.data.synth import RENDERED_ATTRIBUTES
    from conceptvae.evaluate import Judge
    from conceptvae.model import ConceptVAE
    from conceptvae.pretrained import resolve
    from conceptvae.vectors import make_estimator, split_latents

    info = machine()
    t0 = time.perf_counter()
    path = resolve(args.run)
    vae = ConceptVAE.from_pretrained(path)
    cache = open_cache(args.data)
    names = list(cache.attr_names)
    targets = [n for n in names if n in RENDERED_ATTRIBUTES]
    if args.judge:
        passed = set(Judge.load(args.judge).judged())
        targets = [n for n in targets if n in passed]
    kept = path if (path / "latents").is_dir() else None
    train_idx, z = split_latents(vae, cache, "train", kept, progress=False)
    y = np.asarray(cache.labels[train_idx])
    crop = int(round(getattr(vae.config, "crop", None) or 148))
    rng = np.random.default_rng(1)
    with torch.inference_mode():
        truth = {
            a: true_change(vae, a, names, train_idx, z, y, args, args.faces, crop, rng)
            for a in targets
        }
    rendered = time.perf_counter() - t0
    fitted: dict[str, AttributeVectors] = {
        m: make_estimator(m, targets).fit(z, y, names) for m in METHODS
    }
    rows = []
    for a in targets:
        rows.append({"attribute": a, **{m: _cos(fitted[m].vector(a), truth[a]) for m in METHODS}})
    means = {m: float(np.mean([r[m] for r in rows])) for m in METHODS}
    best = {m: sum(max(METHODS, key=lambda k: r[k]) == m for r in rows) for m in METHODS}
    print(f"{args.run} on {args.data}: cosine of each method's vector with the true direction "
          f"({args.faces} train faces per attribute; {time.perf_counter() - t0:.0f} s, "
          f"{rendered:.0f} s rendering; {info['cpu']})\n")  # fmt: skip
    print("| attribute | " + " | ".join(METHODS) + " |")
    print("|---|" + "---:|" * len(METHODS))
    for r in rows:
        top = max(r[m] for m in METHODS)
        cells = [f"**{r[m]:.2f}**" if r[m] == top else f"{r[m]:.2f}" for m in METHODS]
        print(f"| {r['attribute']} | " + " | ".join(cells) + " |")
    print("| mean | " + " | ".join(f"{means[m]:.3f}" for m in METHODS) + " |")
    print("| closest in | " + " | ".join(str(best[m]) for m in METHODS) + " |")
    out = args.out or Path(__file__).resolve().parent / "results" / "truth_directions.json"
    write_report(out, "truth_directions", info, run=args.run, data=args.data,
                 faces=args.faces, rows=rows, means=means, closest=best)  # fmt: skip


if __name__ == "__main__":
    main()

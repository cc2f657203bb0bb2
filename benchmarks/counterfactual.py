"""Edits against the truth: each SynthFace re-rendered with exactly one attribute flipped.

    python benchmarks/counterfactual.py synthfaces64 data/s20k64 --synth-seed 0 --synth-n 20000
    python benchmarks/counterfactual.py runs/heldout data/heldout64 --synth-seed 7 \
        --synth-n 10000 --style ink --judge data/heldout-judge     # the held-out ink set

A concept-vector edit is judged by an attribute classifier, so its "leakage" mixes three
things: what the vector wrongly changes, what the judge reads wrongly, and what the attribute
itself changes in the data (a smile narrows the eyes). SynthFaces can tell them apart: its
renderer draws a face from flags, so the *perfect* edit of a test face is the same face drawn
with one flag flipped (``synth.with_attribute``). For every attribute the judge recognises and
the renderer draws, on up to --n-faces test faces per direction, this script renders the face
and its counterfactual exactly as ``conceptvae prepare`` stores them (JPEG quality 90, centred
crop, area resize), edits the face with the bank's calibrated vector at +1 / -1 and the local
blend (redrawing as much as the bank chose for that edit), and reports:

- success of the edit and of the counterfactual (the judge's own success on perfect edits);
- leakage of the edit and of the counterfactual: the mean flip rate of the independent judged
  attributes (the same set ``evaluate`` uses); the counterfactual's is the floor a vector
  cannot go under with this judge;
- disagreement: the mean rate at which the edit and the counterfactual are judged differently
  on those attributes: how far the edit is from the truth;
- the model's floor (with --truth-faces, on by default): the *decoded* true edit, each test
  face edited to its counterfactual's own posterior mean (decode(encode(truth)) in place of
  decode(z + step), the same local blend): what the model draws when it is handed the perfect
  latent edit, face by face (with the bank's redraw for the pair). When that leaks as much as
  the vector, the leakage is the model's (its 64 px decoder redraws more than the attribute),
  not the vector's;
- the truth direction: one vector for all faces, the mean latent change from face to
  counterfactual over --truth-faces *train* faces (added and removed), calibrated on the
  valid split like the bank's vectors (its redraw chosen the same way): what the best single
  direction could do, so a vector
  far above it leaks because of its estimate, not because no direction is clean.

Prints a table and writes benchmarks/results/counterfactual.json (or --out).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def prepared(params, image_size: int, crop: int, style: str | None = None) -> np.ndarray:
    """The (3, S, S) uint8 crop ``conceptvae prepare`` makes of this face's rendered JPEG, as
    ``conceptvae synth`` writes it (quality 90) or, with ``style``, as ``benchmarks/heldout.py``
    does (quality 95, redrawn in ``style`` with the file's number as seed, quality 90)."""
    import cv2

    from conceptvae.data.cache import _load_image
    from conceptvae.data.synth import render_face

    img, _ = render_face(params)
    bgr = img[:, :, ::-1]
    if style is not None:
        from heldout import restyle

        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        rgb = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
        bgr = restyle(rgb, style, params.index + 1)[..., ::-1]
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    out, _ = _load_image(io.BytesIO(buf.tobytes()), image_size, crop, False)
    return out


def _success(verdicts, col: int, label: int) -> float:
    hit = verdicts[:, col] if label == 0 else ~verdicts[:, col]
    return float(hit.float().mean())


def _rate(p, q, others: list[int]) -> float:
    """How often ``p`` and ``q`` are judged differently on ``others``, averaged over them."""
    return float((p[:, others] != q[:, others]).float().mean()) if others else 0.0


def true_change(vae, a, names, train_idx, z_train, y_train, args, n_faces, crop, rng):
    """The mean latent change from a train face to its counterfactual: ``a`` added on half of
    ``n_faces`` train faces that lack it and removed on half that have it (the change of a
    removal counted with its sign turned); (D,) float32. ``z_train``/``y_train``: the train
    split's posterior means and labels, rows ``train_idx`` of the set."""
    import torch

    from conceptvae.data.synth import sample_params, with_attribute

    t = names.index(a)
    S = vae.config.image_size
    changes = []
    for label in (0, 1):
        pick = rng.permutation(np.flatnonzero(y_train[:, t] == label))[: n_faces // 2]
        if pick.size == 0:
            continue
        params = [sample_params(args.synth_seed, int(train_idx[i]), args.synth_n) for i in pick]
        x_cf = np.stack([prepared(with_attribute(p, a, 1 - label), S, crop, args.style)
                         for p in params])  # fmt: skip
        z_cf = vae.encode(torch.from_numpy(x_cf).float().div(255).to(vae.device)).mean
        change = z_cf.float().cpu().numpy() - z_train[pick]
        changes.append(change if label == 0 else -change)
    return np.concatenate(changes).mean(0).astype(np.float32)


def truth_direction(
    vae, judge, cache, a, names, train_idx, z_train, y_train, valid_idx, z_valid, y_valid, args,
    crop, rng,
):  # fmt: skip
    """:func:`true_change` over ``args.truth_faces`` faces, calibrated on the valid split like
    a bank's vector: ``(vector, removal scale, footprint weight, redraws)``, ``redraws`` the
    local blend's redraw chosen for it per direction."""
    import torch

    from conceptvae.calibration import calibrate, footprint_weight, redraw_of

    u = true_change(vae, a, names, train_idx, z_train, y_train, args, args.truth_faces, crop, rng)
    cal = calibrate(
        vae, judge, {a: u}, faces=cache.batch, held_idx=valid_idx, held_z=z_valid,
        held_labels=y_valid, names=names, train_z=z_train,
        train_labels=y_train, progress=False,
    )  # fmt: skip
    return (
        torch.as_tensor(np.asarray(cal["vectors"][a], np.float32)),
        float(cal["removal_scale"][a]),
        footprint_weight(cal["footprints"][a]),
        {d: redraw_of(cal["calibration"], a, d) for d in ("add", "remove")},
    )


def synth_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with what re-rendering a SynthFaces set's faces needs: the run, the prepared
    cache and how the set was made (seed, size, held-out style)."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("run")
    ap.add_argument("data", help="a prepared cache of a SynthFaces set")
    ap.add_argument("--synth-seed", type=int, default=0, help="the seed the set was made with")
    ap.add_argument("--synth-n", type=int, default=20000, help="the set's size (--n of synth)")
    ap.add_argument("--style", help="the set was restyled by benchmarks/heldout.py in this style")
    return ap


def main(argv: list[str] | None = None) -> None:
    ap = synth_arguments(__doc__.split("\n")[0])
    ap.add_argument("--judge", help="a judge trained on the set [default: RUN/judge]")
    ap.add_argument("--n-faces", type=int, default=100)
    ap.add_argument("--attributes", help="comma-separated (default: every judged, drawn one)")
    ap.add_argument(
        "--truth-faces",
        type=int,
        default=200,
        help="train faces for the truth direction (0: no model floor, no direction)",
    )
    ap.add_argument("--out", help="JSON path [default: benchmarks/results/counterfactual.json]")
    args = ap.parse_args(argv)

    import torch
    from common import open_run

    from conceptvae.calibration import crop_edit, footprint_weight, independent_columns, redraw_of
    from conceptvae.data import Frame
    from conceptvae.data.synth import RENDERED_ATTRIBUTES, sample_params, with_attribute
    from conceptvae.faces import face_mask
    from conceptvae.pretrained import resolve
    from conceptvae.vectors import split_latents

    t0 = time.perf_counter()
    judge_dir = Path(args.judge) if args.judge else resolve(args.run) / "judge"
    vae, bank, cache, judge, judged = open_run(args.run, args.data, judge_dir)
    names = list(cache.attr_names)
    S = vae.config.image_size
    crop = int(round(getattr(vae.config, "crop", None) or 148))
    mask = torch.from_numpy(face_mask(S, Frame(image_size=S, crop=crop)))
    wanted = args.attributes.split(",") if args.attributes else judged
    targets = [a for a in wanted if a in judged and a in RENDERED_ATTRIBUTES]
    y_train = np.asarray(cache.labels[cache.split("train")])
    test = cache.split("test")
    y_test = np.asarray(cache.labels[test])
    rng = np.random.default_rng(0)
    rows = []
    truth_of = {}
    if args.truth_faces > 0:
        # a run folder's latent cache is read (and kept) when it has one; else encode here
        path = resolve(args.run)
        kept = path if (path / "latents").is_dir() else None
        train_idx, z_train = split_latents(vae, cache, "train", kept, progress=False)
        valid_idx, z_valid = split_latents(vae, cache, "valid", kept, progress=False)
        y_valid = np.asarray(cache.labels[valid_idx])
    with torch.inference_mode():
        for a in targets:
            t = names.index(a)
            others = independent_columns(judge, names, y_train, a, judged)
            col = judge.names.index(a)
            v = torch.tensor(np.asarray(bank[a], np.float32))  # a copy: banks load read-only
            weight = footprint_weight(bank.footprints[a])
            if args.truth_faces > 0:
                truth_of[a] = truth_direction(
                    vae, judge, cache, a, names, train_idx, z_train, y_train, valid_idx,
                    z_valid, y_valid, args, crop, rng,
                )  # fmt: skip
            for direction, label in (("add", 0), ("remove", 1)):
                pick = rng.permutation(np.flatnonzero(y_test[:, t] == label))[: args.n_faces]
                if pick.size == 0:
                    continue
                params = [sample_params(args.synth_seed, int(test[i]), args.synth_n) for i in pick]
                x = np.stack([prepared(p, S, crop, args.style) for p in params])
                flipped = [with_attribute(p, a, 1 - label) for p in params]
                x_cf = np.stack([prepared(p, S, crop, args.style) for p in flipped])
                x = torch.from_numpy(x).float() / 255
                x_cf = torch.from_numpy(x_cf).float() / 255
                z = vae.encode(x.to(vae.device)).mean.float()
                step = v if label == 0 else -bank.removal_scale(a) * v
                d0 = vae.decode(z).float().clamp(0, 1).cpu()
                d1 = vae.decode(z + step.to(z.device)[None]).float().clamp(0, 1).cpu()
                # the bank's own redraw for this edit; the model's true edit gets the same
                g = redraw_of(bank.metadata.get("calibration", {}), a, direction)
                edit = crop_edit(x, d0, d1, "local", weight=weight, mask=mask, redraw=g)
                before, after, truth = (judge.decide(im).cpu() for im in (x, edit, x_cf))
                extra = {}
                if a in truth_of:
                    u, u_scale, u_weight, u_redraw = truth_of[a]
                    z_cf = vae.encode(x_cf.to(vae.device)).mean.float()
                    d_cf = vae.decode(z_cf).float().clamp(0, 1).cpu()
                    decoded = judge.decide(
                        crop_edit(x, d0, d_cf, "local", weight=u_weight, redraw=g)
                    ).cpu()
                    u_step = u if label == 0 else -u_scale * u
                    d_u = vae.decode(z + u_step.to(z.device)[None]).float().clamp(0, 1).cpu()
                    along = judge.decide(
                        crop_edit(x, d0, d_u, "local", weight=u_weight, redraw=u_redraw[direction])
                    ).cpu()
                    extra = {
                        "success_decoded_truth": _success(decoded, col, label),
                        "leakage_decoded_truth": _rate(decoded, before, others),
                        "success_truth_direction": _success(along, col, label),
                        "leakage_truth_direction": _rate(along, before, others),
                    }

                flips_cf = (truth[:, others] != before[:, others]).float().mean(0)
                rows.append(
                    {
                        "attribute": a,
                        "direction": direction,
                        "n": int(pick.size),
                        "success": _success(after, col, label),
                        "success_counterfactual": _success(truth, col, label),
                        "leakage": _rate(after, before, others),
                        "leakage_counterfactual": _rate(truth, before, others),
                        "disagreement": _rate(after, truth, others),
                        **extra,
                        "counterfactual_flips": {
                            judge.names[c]: float(f)
                            for c, f in zip(others, flips_cf.tolist())
                            if f >= 0.05
                        },
                    }
                )
                r = rows[-1]
                print(
                    f"{a:20s} {direction:6s} success {r['success']:.2f} (truth "
                    f"{r['success_counterfactual']:.2f})  leakage {r['leakage']:.3f} (truth "
                    f"{r['leakage_counterfactual']:.3f})  disagreement {r['disagreement']:.3f}"
                    + (
                        f"  decoded truth {r['success_decoded_truth']:.2f} / "
                        f"{r['leakage_decoded_truth']:.3f}  truth direction "
                        f"{r['success_truth_direction']:.2f} / {r['leakage_truth_direction']:.3f}"
                        if extra
                        else ""
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    print(f"\n{args.run} on {args.data} (test split), {len(targets)} attributes the judge "
          f"recognises and SynthFaces draws; {time.perf_counter() - t0:.0f} s\n")  # fmt: skip
    truth = bool(truth_of)
    print("| attribute | direction | success | success, true edit | leakage | leakage, true "
          "edit | disagreement with the true edit | "
          + ("decoded truth: success / leakage | truth direction: success / leakage | "
             if truth else "") + "what the true edit flips too |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if truth else "") + "---|")
    for r in rows:
        also = ", ".join(f"{k} {v:.0%}" for k, v in sorted(
            r["counterfactual_flips"].items(), key=lambda kv: -kv[1])) or "-"  # fmt: skip
        more = ""
        if "leakage_decoded_truth" in r:
            more = "".join(
                f"{r['success_' + k]:.2f} / {r['leakage_' + k]:.3f} | "
                for k in ("decoded_truth", "truth_direction")
            )
        print(
            f"| {r['attribute']} | {r['direction']} | {r['success']:.2f} | "
            f"{r['success_counterfactual']:.2f} | {r['leakage']:.3f} | "
            f"{r['leakage_counterfactual']:.3f} | {r['disagreement']:.3f} | {more}{also} |"
        )
    if rows:
        keys = ["success", "success_counterfactual", "leakage", "leakage_counterfactual",
                "disagreement"]  # fmt: skip
        if truth:
            keys += ["success_decoded_truth", "leakage_decoded_truth", "success_truth_direction",
                     "leakage_truth_direction"]  # fmt: skip
        mean = {k: float(np.mean([r[k] for r in rows if k in r])) for k in keys}
        print("\nmeans: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()))
    out = Path(args.out or Path(__file__).resolve().parent / "results" / "counterfactual.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"run": args.run, "data": args.data, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

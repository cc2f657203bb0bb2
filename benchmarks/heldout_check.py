"""A trained model's calibrated edits on a held-out face set in a style it never saw.

    python benchmarks/heldout.py data/heldout --n 10000 --seed 7 --style ink
    conceptvae prepare data/heldout data/heldout64
    python benchmarks/heldout_check.py synthfaces64 data/heldout64 [--judge-minutes 4]

The model and its bank (calibrated on its own valid split) are used as they are; a judge is
trained on the held-out set's own train split (its labels, its style), and every attribute it
judges is added (+1) and removed (-1) on up to --n-faces of the held-out test faces, with the
local blend, as `conceptvae edit` does: success (with its 95% interval, by person: a person's
faces tend to succeed or fail together, so it is Wilson's on the faces over the design effect,
which is printed too), leakage,
visible leakage, SSIM outside the footprint, and leakage over the free attributes only (neither
implied by the labels, nor hidden by the target, nor weakly judged) with the same for the null
edit (no step). With --floor (a benchmarks/counterfactual.py JSON made with the same judge on
the same data), each pair also gets its verdict (calibration.verdict): works, at the judge's
floor (no more than 1 point above the true re-rendered edit's leakage), data ties, at the
model's floor (no more than 1 point above what the model's own decoding of the true edit
leaks), the true direction leaks as much (the true edits' mean direction, calibrated), too weak,
the judge misses the true edit (neither the true edit nor the true direction is judged on 95% of
faces) or vector leaks. Prints a table and writes benchmarks/results/heldout_check.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run")
    ap.add_argument("data", help="a prepared cache of the held-out set")
    ap.add_argument("--judge", help="a judge trained on the held-out set (else trained here)")
    ap.add_argument("--judge-minutes", type=float, default=4.0)
    ap.add_argument("--n-faces", type=int, default=200)
    ap.add_argument("--out", help="JSON path [default: benchmarks/results/heldout_check.json]")
    ap.add_argument("--floor", help="counterfactual.py's JSON for the same judge and data")
    ap.add_argument(
        "--split",
        choices=("test", "valid"),
        default="test",
        help="the split edited: valid for a development set (heldout.py --restyle)",
    )
    ap.add_argument(
        "--no-hold",
        action="store_true",
        help="edit without the holds the bank chose (conceptvae.hold)",
    )
    args = ap.parse_args(argv)

    from common import open_run

    from conceptvae.calibration import SUCCESS_GOAL
    from conceptvae.data.cache import open_cache
    from conceptvae.evaluate import train_judge
    from conceptvae.evaluation.saved import measure_saved
    from conceptvae.hold import Readers
    from conceptvae.pretrained import resolve

    t0 = time.perf_counter()
    floors = {}
    if args.floor:
        for r in json.loads(Path(args.floor).read_text())["rows"]:
            floors[r["attribute"], r["direction"]] = {
                "success": r["success_counterfactual"],
                "leakage": r["leakage_counterfactual"],
                "n": r.get("n"),
                # the model's own true edits (present when counterfactual.py measured them)
                **{
                    f"{k}_{m}": r[f"{m}_{w}"]
                    for k, w in (("decoded", "decoded_truth"), ("direction", "truth_direction"))
                    for m in ("success", "leakage")
                    if f"{m}_{w}" in r
                },
            }
    judge_dir = Path(args.judge) if args.judge else Path(args.data).parent / "heldout-judge"
    if not args.judge and not (judge_dir / "judge.json").is_file():
        train_judge(open_cache(args.data), judge_dir, max_minutes=args.judge_minutes)
    vae, bank, cache, judge, judged = open_run(args.run, args.data, judge_dir)
    readers = None if args.no_hold else Readers.load(resolve(args.run))
    result = measure_saved(vae, bank, readers, cache, judge, n_faces=args.n_faces,
                           split=args.split, floors=floors, progress=False)  # fmt: skip
    rows = result["rows"]
    works = sum(r["works"] for r in rows)
    works_free = sum(r["works_free"] for r in rows)
    print(f"{args.run} on {args.data} ({args.split} split), judge trained on its train split "
          f"({len(judged)} attributes judged); {time.perf_counter() - t0:.0f} s")  # fmt: skip
    print(f"{works} of {len(rows)} (attribute, direction) pairs work (success >= 95%, leakage "
          f"<= 2%); {works_free} counting free leakage only\n")  # fmt: skip
    less = sum(r["redraw"] < 1 for r in rows)
    print(f"mean SSIM to the photo {np.mean([r['ssim'] for r in rows]):.4f}; the local blend "
          f"redraws less than all of the decoded face in {less} of {len(rows)} pairs")  # fmt: skip
    short = [r for r in rows if r["success"] < SUCCESS_GOAL]
    near = sum(r["success_interval"][1] >= SUCCESS_GOAL for r in short)
    near_faces = sum(r["faces_interval"][1] >= SUCCESS_GOAL for r in short)
    print(f"success under {SUCCESS_GOAL:.0%} in {len(short)} pairs; in {near} of them "
          f"{SUCCESS_GOAL:.0%} is inside the 95% interval by person ({near_faces} counting "
          "every face as drawn on its own)")  # fmt: skip
    deff = [r["design_effect"] for r in rows]
    print(f"design effect (faces per independent face): median {np.median(deff):.2f}, "
          f"max {max(deff):.2f}")  # fmt: skip
    counts = result["verdicts"]
    print("verdicts: " + ", ".join(f"{k} {n}" for k, n in counts.items() if n) + "\n")
    print("| attribute | direction | method | success (95% interval) | n | design effect "
          "| leakage | free leakage "
          "| free, no step | true edit: leakage (/ decoded / direction) | SSIM outside | verdict "
          "| largest flips (why) |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        fl = "-" if r["floor"] is None else f"{r['floor']['leakage']:.3f}"
        for k in ("decoded", "direction"):
            if r["floor"] is not None and f"{k}_leakage" in r["floor"]:
                fl += f" / {r['floor'][f'{k}_leakage']:.3f}"
        print(
            f"| {r['attribute']} | {r['direction']} | {r['method']} | {r['success']:.3f} "
            f"({r['success_interval'][0]:.3f}-{r['success_interval'][1]:.3f}) | {r['n']} | "
            f"{r['design_effect']:.2f} | {r['leakage']:.3f} | {r['leakage_free']:.3f} | "
            f"{r['null_leakage_free']:.3f} | "
            f"{fl} | {r['ssim_outside']:.3f} | {r['verdict']} | "
            f"{'; '.join(r['why']) or '-'} |"
        )
    out = Path(args.out or Path(__file__).resolve().parent / "results" / "heldout_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"run": args.run, "data": args.data, "split": args.split, "floor": args.floor,
               "verdicts": counts}  # fmt: skip
    out.write_text(json.dumps({**summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()

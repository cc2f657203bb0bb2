"""The calibrated-edit table of one or more `conceptvae evaluate` reports, as markdown.

    conceptvae evaluate synthfaces64 data/s20k64 -o runs/ship-report --strengths 1 --n-faces 200
    python benchmarks/edit_table.py runs/ship-report [runs/heldout-report ...]

For each report: per judged attribute and direction (add at +1, remove at -1, on the report's
test faces), the best method (the one that works, success >= 95% with leakage <= 2%, with the
least leakage; failing that the best success), its success, leakage (all independent judged
attributes) and visible leakage (without those the attribute hides from the judge), whether
every method is within 10 points of the best, and what the other blends give for that method.
Writes the tables to stdout and the rows to benchmarks/results/edit_table.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def table(report: dict) -> list[str]:
    rows = report.get("calibrated_summary") or []
    cal = report.get("calibrated") or {}
    works = sum(r["works"] for r in rows)
    visible = sum(r["works_visible"] for r in rows)
    within = sum(r["methods_within_10"] for r in rows)
    out = [
        f"{works} of {len(rows)} (attribute, direction) pairs work (success >= 95%, leakage <= "
        f"2%) for their best method; {visible} counting visible leakage only; every method "
        f"within 10 points of the best in {within}.",
        "",
        "| attribute | direction | best method | success | leakage | visible leakage | "
        "SSIM outside footprint | residual blend: success / leakage | replace: success / "
        "leakage | methods within 10 pts | hidden by it |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|:---:|---|",
    ]
    for r in rows:
        a, d, m = r["attribute"], r["direction"], r["best_method"]
        cell = cal[a]["methods"][m][d]
        other = [
            f"{cell[b]['success']:.2f} / {cell[b]['leakage']:.3f}" if b in cell else "-"
            for b in ("residual", "replace")
        ]
        out.append(
            f"| {a} | {d} | {m} | {r['success']:.2f} | {r['leakage']:.3f} | "
            f"{r['leakage_visible']:.3f} | {r['ssim_outside']:.3f} | {other[0]} | {other[1]} | "
            f"{'yes' if r['methods_within_10'] else 'no'} | "
            f"{', '.join(cal[a].get('hidden', [])) or '-'} |"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("reports", nargs="+", help="report folders (or report.json files)")
    args = ap.parse_args(argv)
    everything = {}
    for path in args.reports:
        p = Path(path)
        p = p / "report.json" if p.is_dir() else p
        report = json.loads(p.read_text(encoding="utf-8"))
        print(f"### {p.parent.name}: {report['data']} ({report['split']} split)\n")
        print("\n".join(table(report)))
        print()
        everything[str(p)] = report.get("calibrated_summary")
    out = Path(__file__).resolve().parent / "results" / "edit_table.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(everything, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()

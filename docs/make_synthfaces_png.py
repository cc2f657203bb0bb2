"""Make docs/synthfaces.png: the first 64 SynthFaces of seed 0 with their positive labels.

Run from the repository root: ``.venv/bin/python docs/make_synthfaces_png.py``.
"""

from __future__ import annotations

from pathlib import Path

from conceptvae.data.synth import label_grid


def main() -> None:
    out = Path(__file__).with_name("synthfaces.png")
    label_grid(seed=0, count=64, cols=8).save(out, optimize=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Make the pictures of docs/editing.md with the command line, from SynthFaces in larger scenes.

Run from the repository root after the shipped model exists:
``.venv/bin/python docs/make_editing_pictures.py``. It renders four non-smiling SynthFaces (seed 7,
not the training seed), pastes them into 640 x 520 scenes (scaled 2.2x, tilted 8 degrees), runs
``conceptvae edit`` (an edit and a sweep), ``conceptvae interpolate`` and ``conceptvae grid``
on them with the shipped ``synthfaces64`` model, and writes small PNGs to docs/editing/.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

import conceptvae.demo as demo
from conceptvae.data.synth import render_face, sample_params

OUT = Path(__file__).resolve().parent / "editing"
SEED, N = 7, 200
SIZE = (640, 520)  # scenes: the face fills about half the height


def pick(n: int, **want: bool) -> list[int]:
    """The first ``n`` faces (one per identity) whose attributes match ``want``, not blurry."""
    out, seen = [], set()
    for i in range(N):
        p = sample_params(SEED, i, N)
        if p.attrs["Blurry"] or p.identity in seen:
            continue
        if all(p.attrs[k] == v for k, v in want.items()):
            out.append(i)
            seen.add(p.identity)
        if len(out) == n:
            return out
    raise RuntimeError(f"no {n} faces with {want}")


def cli(*args: str) -> None:
    cmd = [sys.executable, "-m", "conceptvae", *map(str, args)]
    print("$ conceptvae", " ".join(map(str, args)))
    subprocess.run(cmd, check=True)


def shrink(src: Path, dst: Path, width: int) -> None:
    with Image.open(src) as im:
        im = im.convert("RGB")
        if im.width > width:
            im = im.resize((width, round(im.height * width / im.width)), Image.Resampling.LANCZOS)
        im.save(dst, optimize=True)


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo.PHOTO_SCALE, demo.PHOTO_CENTRE = 2.2, (0.5, 0.5)
        woman, man = pick(2, Smiling=False, Male=False), pick(2, Smiling=False, Male=True)
        scenes = []
        for i in (woman[0], man[0], woman[1], man[1]):
            face, _ = render_face(sample_params(SEED, i, N))
            path = tmp / f"scene{i}.png"
            Image.fromarray(demo._place(np.asarray(face), *SIZE)).save(path)
            scenes.append(path)
        out = tmp / "out"
        out.mkdir()
        cli("edit", "synthfaces64", scenes[0], "--edit", "Smiling+1.5", "-o", out)
        before, after = Image.open(scenes[0]).convert("RGB"), Image.open(out / scenes[0].name)
        pair = Image.new("RGB", (before.width * 2 + 8, before.height), "white")
        pair.paste(before, (0, 0))
        pair.paste(after, (before.width + 8, 0))
        pair.save(tmp / "pair.png")
        shrink(tmp / "pair.png", OUT / "edit_before_after.png", 900)
        cli("edit", "synthfaces64", scenes[1], "--sweep", "Smiling=-2:2:5", "-o", out)
        shrink(out / f"{scenes[1].stem}_sweep.png", OUT / "sweep.png", 1000)
        cli("interpolate", "synthfaces64", scenes[2], scenes[3], "--steps", "6",
            "-o", out / "interp.png")  # fmt: skip
        shrink(out / "interp.png", OUT / "interpolation.png", 1000)
        cli("grid", "synthfaces64", scenes[0], "--x", "Smiling=-2:2:5", "--y", "Male=-2:2:5",
            "-o", out / "plane.png")  # fmt: skip
        shrink(out / "plane.png", OUT / "plane.png", 600)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

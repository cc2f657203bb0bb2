"""Make the pictures of docs/editing.md with the command line, from SynthFaces in larger scenes.

Run from the repository root after the shipped model exists:
``.venv/bin/python docs/make_editing_pictures.py``. It renders four non-smiling SynthFaces (seed 7,
not the training seed), pastes them into 640 x 520 scenes (scaled 2.2x, tilted 8 degrees), runs
``conceptvae edit`` (an edit and a sweep), ``conceptvae interpolate`` and ``conceptvae grid``
on them with the shipped ``synthfaces64`` model, and writes small PNGs to docs/editing/; and
hair.png: Brown_Hair added to three faces of other hair colours, with and without the shipped
swaps (through ``EditPipeline``).
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
        hair_swaps(tmp)
    print(f"wrote {OUT}")


def hair_swaps(tmp: Path) -> None:
    """docs/editing/hair.png: Brown_Hair added at +1 to a blond, a black-haired and a grey-haired
    face, with the brown-hair vector alone and with the shipped swaps."""
    from PIL import ImageDraw

    from attributes.bank import VectorBank
    from conceptvae.edit import EditPipeline

    pipe = EditPipeline.from_pretrained("synthfaces64")
    swaps = pipe.bank
    plain = VectorBank({n: swaps[n] for n in swaps.names}, metadata=swaps.metadata,
                       footprints=swaps.footprints)  # fmt: skip
    rows = []
    for colour in ("Blond_Hair", "Black_Hair", "Gray_Hair"):
        params = (sample_params(SEED, i, 2000) for i in range(2000))  # grey hair is rare
        p = next(p for p in params if p.attrs[colour] and not (p.attrs["Wearing_Hat"]
                                                                or p.attrs["Blurry"]))  # fmt: skip
        face, _ = render_face(p)
        scene = Image.fromarray(demo._place(np.asarray(face), *SIZE))
        cells = [scene]
        for bank in (plain, swaps):
            pipe.bank = bank
            cells.append(pipe(scene, "Brown_Hair", 1.0))
        w, h = SIZE
        box = (w // 2 - 240, 0, w // 2 + 240, h)  # the face and its hair
        rows.append([c.crop(box).resize((190, 206), Image.Resampling.LANCZOS) for c in cells])
    top = 22
    sheet = Image.new("RGB", (3 * 190 + 2 * 6, top + 3 * 206 + 2 * 6), "white")
    draw = ImageDraw.Draw(sheet)
    for k, title in enumerate(("photo", "Brown_Hair: one vector", "Brown_Hair: swap")):
        draw.text((k * 196 + 6, 5), title, fill="black")
    for r, cells in enumerate(rows):
        for k, cell in enumerate(cells):
            sheet.paste(cell, (k * 196, top + r * 212))
    sheet.save(OUT / "hair.png", optimize=True)


if __name__ == "__main__":
    main()

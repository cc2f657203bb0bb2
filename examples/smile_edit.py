"""Add a smile to a photo with the shipped model: find the face, edit it, put it back.

    python examples/smile_edit.py [PHOTO] [-o examples-out/]

Writes OUT/smile.png (PHOTO with "Smiling + 1.5", same size; pixels off the face unchanged) and
OUT/smile_sweep.png (the face from -2 to +2 along Smiling). Without PHOTO it first makes one,
OUT/photo.png: a SynthFaces face, tilted and pasted into a larger picture.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from conceptvae.data.synth import render_face, sample_params
from conceptvae.edit import EditPipeline
from conceptvae.grids import strip


def make_photo(seed: int = 2026, n: int = 1000) -> Image.Image:
    """A 640 x 480 picture holding the first not-smiling face of a SynthFaces set, 1.5x size."""
    i = next(i for i in range(n) if not sample_params(seed, i, n).attrs["Smiling"])
    face = Image.fromarray(render_face(sample_params(seed, i, n))[0]).resize((267, 327))
    mask = Image.new("L", face.size, 0)  # a soft oval: the face's own background fades out
    ImageDraw.Draw(mask).ellipse((24, 24, face.width - 24, face.height - 24), fill=255)
    face, mask = (im.rotate(8, Image.Resampling.BICUBIC, expand=True) for im in (face, mask))
    y, x = np.ogrid[0:1:480j, 0:1:640j]
    t = (0.6 * x + 0.4 * y)[..., None]  # a two-colour gradient behind the face
    photo = Image.fromarray(np.uint8((1 - t) * (236, 226, 208) + t * (150, 176, 196)))
    photo.paste(
        face,
        (350 - face.width // 2, 240 - face.height // 2),
        mask.filter(ImageFilter.GaussianBlur(8)),
    )
    return photo


parser = argparse.ArgumentParser(description="Add a smile to a photo.")
parser.add_argument("photo", nargs="?", help="a photo with a face [default: make one]")
parser.add_argument("-o", "--out", default="examples-out", help="output folder")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
photo = args.photo
if photo is None:
    photo = out / "photo.png"
    make_photo().save(photo)

edit = EditPipeline.from_pretrained("synthfaces64")
prepared = edit.prepare(photo)  # find, align and encode the face once, then edit it often
edit(prepared, "Smiling + 1.5").save(out / "smile.png")

strengths = [-2, -1, 0, 1, 2]
frames = edit.sweep(prepared, "Smiling", strengths)
x, y, w, h = prepared.faces[0].aligned.face.box  # show the face with some margin around it
W, H = frames[0].size
box = (max(x - w // 2, 0), max(y - h // 2, 0), min(x + w + w // 2, W), min(y + h + h // 2, H))
frames = [f.crop(box) for f in frames]
strip(frames, strengths, title="Smiling", cell=192).save(out / "smile_sweep.png")
print(f"wrote {out / 'smile.png'} and {out / 'smile_sweep.png'}")

"""Walk between four faces in the shipped model's latent space: a 2-D grid, and lerp vs slerp.

    python examples/interpolation_grid.py [A B C D] [-o examples-out/] [--steps 6]

Encodes four faces (the photos given, each found and aligned; by default four SynthFaces) and
puts them at the corners of a grid filled by slerp: OUT/interp_grid.png. Then walks from A to D
(opposite corners) by lerp and by slerp: OUT/lerp_vs_slerp.png. The printed latent norms show
why slerp is the default: lerp cuts through the middle, shorter than any face's latent.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image

from conceptvae.data.synth import render_face, sample_params
from conceptvae.edit import EditPipeline
from conceptvae.grids import image_grid, interpolate, interpolate_grid

parser = argparse.ArgumentParser(description="Interpolate between four faces.")
parser.add_argument("photos", nargs="*", help="4 photos: top-left, top-right, bottom-left, "
                    "bottom-right [default: 4 SynthFaces]")  # fmt: skip
parser.add_argument("-o", "--out", default="examples-out", help="output folder")
parser.add_argument("--steps", type=int, default=6, help="faces along each side")
args = parser.parse_args()
if len(args.photos) not in (0, 4):
    parser.error(f"give four photos or none, not {len(args.photos)}")
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)

pipe = EditPipeline.from_pretrained("synthfaces64")
if args.photos:
    faces = [pipe.prepare(p).faces[0] for p in args.photos]
else:  # rendered faces are already aligned: the whole image is the face
    pics = [Image.fromarray(render_face(sample_params(2026, i, 1000))[0]) for i in (0, 1, 2, 250)]
    faces = [pipe.prepare(pic, align=False).faces[0] for pic in pics]
corners = torch.stack([f.z for f in faces])  # (4, D)
n = args.steps

with torch.inference_mode():
    grid = interpolate_grid(corners, rows=n, cols=n)  # (n, n, D), slerp
    images = pipe.vae.decode(grid.flatten(0, 1)).unflatten(0, (n, n))  # (n, n, 3, S, S)
    image_grid(images, cell=128).save(out / "interp_grid.png")

    paths = {m: interpolate(corners[0], corners[3], n, method=m) for m in ("lerp", "slerp")}
    rows = pipe.vae.decode(torch.cat(list(paths.values()))).unflatten(0, (2, n))
    image_grid(rows, row_labels=list(paths), cell=128).save(out / "lerp_vs_slerp.png")
for method, zs in paths.items():
    print(f"{method:>5} |z| from A to D:", " ".join(f"{v:.1f}" for v in zs.norm(dim=1).tolist()))
print(f"wrote {out / 'interp_grid.png'} and {out / 'lerp_vs_slerp.png'}")

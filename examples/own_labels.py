"""Concept vectors from your own labels: a "Bearded" vector for the shipped model.

    python examples/own_labels.py [-o examples-out/] [--n 400]

Your labels are a labels.csv (filename,Bearded,Male) beside your face images. Here the images
are SynthFaces rendered into a temporary folder, labelled from what was drawn (Bearded = Goatee
or Mustache). Fits balanced vectors (Bearded with Male's share held equal, so it does not also
make faces male), prints their quality report, saves them to OUT/own-vectors/ and writes
OUT/bearded.png: held-out faces before and after "Bearded + 2". The same from the command line,
with a writable copy of the model and your photos in two folders:

    cp -r "$(python -c 'import conceptvae.pretrained as p; print(p.HERE)')/synthfaces64" mymodel
    conceptvae vectors mymodel --positive bearded/ --negative clean/ --name Bearded
"""

import argparse
import csv
import tempfile
from pathlib import Path

from attributes import AttributeVectors, VectorBank, quality_report
from conceptvae.data import open_dataset
from conceptvae.data.cache import prepare
from conceptvae.data.synth import write_synthfaces
from conceptvae.edit import EditPipeline
from conceptvae.grids import image_grid
from conceptvae.model import ConceptVAE
from conceptvae.vectors import split_latents

parser = argparse.ArgumentParser(description="Concept vectors from your own labels.")
parser.add_argument("-o", "--out", default="examples-out", help="output folder")
parser.add_argument("--n", type=int, default=400, help="how many labelled images to make")
args = parser.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
vae = ConceptVAE.from_pretrained("synthfaces64")

with tempfile.TemporaryDirectory() as tmp:
    # -- a labelled folder: images + labels.csv (the part you bring)
    write_synthfaces(Path(tmp, "synth"), n=args.n, seed=1, workers=1, progress=False)
    synth = open_dataset(Path(tmp, "synth"))
    label, photos = synth.labels.T, synth.image_dir
    a = synth.attr_names.index
    with open(photos / "labels.csv", "w", newline="") as f:
        bearded = label[a("Goatee")] | label[a("Mustache")]
        rows = zip(synth.filenames, bearded, label[a("Male")])
        csv.writer(f).writerows([("filename", "Bearded", "Male"), *rows])

    # -- encode: the images are CelebA-aligned, so cut them as the model was trained (crop 148)
    faces = open_dataset(photos)  # reads labels.csv; train/valid/test by a hash of the name
    cache = prepare(faces, Path(tmp, "cache"), image_size=vae.config.image_size,
                    crop=int(vae.config.crop), workers=1, progress=False)  # fmt: skip
    names = cache.attr_names
    train, z_train = split_latents(vae, cache, "train", progress=False)
    valid, z_valid = split_latents(vae, cache, "valid", progress=False)

    # -- fit, judge, save
    est = AttributeVectors(method="balanced").fit(z_train, cache.labels[train], names)
    bank = VectorBank.from_estimator(est, label_source="labels.csv", model_hash=vae.model_hash())
    report = quality_report(bank, None, z_valid, cache.labels[valid], names,
                            train_labels=cache.labels[train])  # fmt: skip
    print(report.to_text())
    bank.save(out / "own-vectors")  # VectorBank.load(..., model_hash=vae.model_hash()) reads it

    # -- apply: held-out faces without a beard, before and after
    edit = EditPipeline(vae, bank)
    plain = [i for i in valid if not cache.labels[i, names.index("Bearded")]][:4]
    pics = [photos / cache.filenames[i] for i in plain]
    rows = [edit.sweep(p, "Bearded", [0, 2], align=False) for p in pics]  # already aligned
    grid = image_grid([list(r) for r in zip(*rows)], row_labels=["before", "Bearded +2"])
    grid.save(out / "bearded.png")
print(f"wrote {out / 'bearded.png'} and {out / 'own-vectors'}/")

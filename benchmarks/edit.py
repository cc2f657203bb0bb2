"""Editing speed: one 1024 x 1024 photo end to end, a batch of 100, and loading the model.

Every time is measured against a reference in the same run and reported as a ratio (medians of
several repeats; this machine is shared and noisy):

1. Model load: ``EditPipeline.from_pretrained`` (config + weights, the vector bank, the model
   hash that checks the bank belongs to the model), with its parts timed on their own.
2. One photo, end to end as ``conceptvae edit`` does it: read, detect, align, encode (and
   reconstruct), edit (decode z + step, paste back under the face mask), write; median over 20
   runs, against the same photo merely read and written (``read_image`` + ``write_image`` with
   its EXIF: the I/O floor). A breakdown by stage follows, each timed on its own.
3. A batch of 100 such photos in one process (the CLI's loop: ``collect_inputs``, then prepare,
   edit and write each into an output folder), photos per second, against the I/O floor over the
   same 100 files.

    python benchmarks/edit.py [--run RUN] [--device cpu] [--quick]

Without ``--run`` it builds a default-size ``ConceptVAE(VAEConfig(image_size=64))`` with random
weights and a random bank in a temporary folder: the timings are the default architecture's (a
trained model of the same config runs exactly as fast). The photos are SynthFaces pasted into
1024 x 1024 noisy backgrounds, JPEG quality 95 with an EXIF block. Prints a table and writes
benchmarks/results/edit.json.
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

# benchmarks/attributes.py would shadow the ``attributes`` package: import the packages with
# this folder off the path, then put the folder back for ``common``.
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from attributes.bank import VectorBank  # noqa: E402
from conceptvae.data.synth import render_face, sample_params  # noqa: E402
from conceptvae.edit import EditPipeline  # noqa: E402
from conceptvae.faces import align_face, find_faces  # noqa: E402
from conceptvae.images import collect_inputs, output_path, read_image, write_image  # noqa: E402
from conceptvae.model import ConceptVAE, VAEConfig  # noqa: E402
from conceptvae.train import resolve_device  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine, write_report  # noqa: E402

SIDE = 1024
EDIT = "Smiling+1.5"
SEED = 0


def _photo(i: int, seed: int = SEED) -> np.ndarray:
    """(SIDE, SIDE, 3) uint8: SynthFaces face ``i`` at about 3x (its eyes ~115 px apart, a
    portrait) pasted into a noisy gradient, turned by a few degrees."""
    rng = np.random.default_rng(seed + i)
    img, lm = render_face(sample_params(seed, i, 1000))
    pts = np.array([lm[0], lm[1], (lm[3] + lm[4]) / 2], np.float64) - 1.0
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    bg = np.stack([40 + 160 * x / SIDE, 60 + 120 * y / SIDE, 130 + 0 * x], -1)
    bg = np.clip(bg + rng.normal(0, 10, bg.shape), 0, 255).astype(np.float32)
    scale, angle = rng.uniform(2.6, 3.2), math.radians(rng.uniform(-6, 6))
    A = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centre = np.array([SIDE / 2, SIDE / 2]) + rng.uniform(-60, 60, 2)
    M = np.hstack([A, (centre - A @ pts.mean(0))[:, None]])
    face = cv2.warpAffine(img, M, (SIDE, SIDE), flags=cv2.INTER_LINEAR).astype(np.float32)
    m = cv2.warpAffine(np.ones(img.shape[:2], np.float32), M, (SIDE, SIDE))[..., None]
    return np.rint(bg * (1 - m) + face * m).astype(np.uint8)


def _write_photos(folder: Path, n: int, distinct: int) -> list[Path]:
    """``n`` JPEGs (quality 95, with an EXIF block like a camera's) cycling through
    ``distinct`` rendered photos."""
    folder.mkdir(parents=True, exist_ok=True)
    exif = Image.Exif()
    exif[0x010F] = "BenchCam"  # Make
    exif[0x0112] = 1  # Orientation
    photos = [Image.fromarray(_photo(i)) for i in range(distinct)]
    paths = []
    for k in range(n):
        p = folder / f"photo_{k:03d}.jpg"
        photos[k % distinct].save(p, quality=95, exif=exif.tobytes())
        paths.append(p)
    return paths


def _default_run(folder: Path) -> Path:
    """A default-size random-init model and a random bank for it, saved in ``folder``."""
    torch.manual_seed(SEED)
    vae = ConceptVAE(VAEConfig(image_size=64))
    vae.save_pretrained(folder)
    g = torch.Generator().manual_seed(SEED + 1)
    d = vae.config.latent_dim
    vectors = {n: torch.randn(d, generator=g) for n in ("Smiling", "Male", "Eyeglasses")}
    VectorBank(vectors, metadata={"model_hash": vae.model_hash()}).save(folder)
    return folder


def _timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return times, out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def edit_one(pipe: EditPipeline, path: Path, out: Path | None) -> Path:
    """What ``conceptvae edit RUN PATH --edit EDIT -o OUT`` does for one photo."""
    prepared = pipe.prepare(path, face=0)
    image = pipe(prepared, EDIT)
    return write_image(image, output_path(path, out), like=prepared.photo)


def io_floor(path: Path, out: Path) -> Path:
    """The reference: the same photo read (upright RGB) and written back with its metadata."""
    photo = read_image(path)
    return write_image(photo.image, output_path(path, out), like=photo)


def stages(pipe: EditPipeline, path: Path, out: Path, repeats: int) -> dict[str, list[float]]:
    """Each stage of one edit timed on its own (medians add up to about the whole)."""
    device = pipe.vae.device
    t_read, photo = _timed(lambda: read_image(path), repeats)
    pixels = np.asarray(photo.image, dtype=np.uint8)
    t_detect, faces = _timed(lambda: find_faces(pixels, 0, source=path), repeats)
    t_align, aligned = _timed(lambda: align_face(pixels, faces[0], pipe.frame), repeats)
    crop = torch.from_numpy(aligned.crop.transpose(2, 0, 1).copy()).float().div(255)[None]

    def encode():
        z = pipe.encode(crop.to(device))
        _sync(device)
        return z

    def decode():
        with torch.inference_mode():
            x = pipe.vae.decode(z).float().clamp(0, 1).cpu()
        _sync(device)
        return x

    t_encode, z = _timed(encode, repeats)
    t_decode, _ = _timed(decode, repeats)
    prepared = pipe.prepare(photo)
    step = pipe.direction(EDIT)
    t_edit, edited = _timed(lambda: pipe.render(prepared, [step]), repeats)
    image = Image.fromarray(edited)
    target = output_path(path, out)
    t_write, _ = _timed(lambda: write_image(image, target, like=photo), repeats)
    return {
        "read (decode JPEG, EXIF, RGB)": t_read,
        "detect (Haar face + eyes)": t_detect,
        "align (warp to 64 px crop)": t_align,
        "encode (posterior mean)": t_encode,
        "decode (reconstruction D(z))": t_decode,
        "edit (decode D(z + step), paste)": t_edit,
        "write (JPEG q95 + EXIF)": t_write,
    }


HELD_EDIT = ("Bald", -1.0)  # a direction the shipped bank holds (conceptvae.hold)


def hold_cost(pipe: EditPipeline, path: Path, repeats: int) -> dict | None:
    """A face's step for ``HELD_EDIT`` with its hold, against the same step without (the
    reference), timed in the same run; None where the model's bank does not hold it."""
    name, strength = HELD_EDIT
    if pipe.bank is None or name not in pipe.bank or not pipe.held(name, strength):
        return None
    z = pipe.prepare(path).faces[0].z
    mode = pipe.hold
    try:
        pipe.hold = "none"
        plain, _ = _timed(lambda: pipe.face_edit(name, strength, z), repeats)
        pipe.hold = mode

        def first():  # the face's first strength: its unedited drawing is read too
            pipe._unedited_cache = None
            return pipe.face_edit(name, strength, z)

        held, _ = _timed(first, repeats)
        # the same face at another strength (a sweep, a GIF): the unedited drawing is kept
        sweep, _ = _timed(lambda: pipe.face_edit(name, strength, z), repeats)
    finally:
        pipe.hold = mode
    return {
        "edit": f"{name}{strength:+g}",
        "labels_held": len(pipe.held(name, strength)),
        "median_ms": _ms(held),
        "seconds": held,
        "reference": "the same face's step without the hold",
        "reference_median_ms": _ms(plain),
        "reference_seconds": plain,
        "ratio": _ms(held) / _ms(plain),
        "sweep_median_ms": _ms(sweep),
        "sweep_seconds": sweep,
        "sweep_ratio": _ms(sweep) / _ms(plain),
    }


def _ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", help="a model folder with vectors (default: a random default-size "
                    "model built in a temporary folder)")  # fmt: skip
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    ap.add_argument("--repeats", type=int, default=None, help="single-photo runs (default 20)")
    ap.add_argument("--batch", type=int, default=None, help="photos in the batch (default 100)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 runs, a batch of 10")
    ap.add_argument("--out", default=str(HERE / "results/edit.json"))
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 20)
    n_batch = args.batch or (10 if args.quick else 100)
    device = resolve_device(args.device)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores_available']} cores, load average "
          f"{info['load_average_at_start']}, torch threads {torch.get_num_threads()}")  # fmt: skip
    print(f"device={device}, repeats={repeats}, batch={n_batch}, photo {SIDE} x {SIDE}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="conceptvae-bench-edit-"))
    # a random model reconstructs nothing well and the pipeline says so for every photo
    warnings.filterwarnings("ignore", message=".*far from the training data")
    try:
        run = Path(args.run) if args.run else _default_run(work / "run")
        paths = _write_photos(work / "photos", n_batch, distinct=min(n_batch, 10))
        path = paths[0]

        # 1. loading
        t_vae, vae = _timed(lambda: ConceptVAE.from_pretrained(run, device=device), repeats)
        t_bank, _ = _timed(lambda: VectorBank.load(run), repeats)
        t_hash, _ = _timed(vae.model_hash, repeats)
        t_load, pipe = _timed(lambda: EditPipeline.from_pretrained(run, device=device), repeats)
        params = sum(p.numel() for p in pipe.vae.parameters())
        cfg = pipe.vae.config

        # 2. one photo: the first call (cascades loaded, kernels warmed), then the median
        single = work / "single"
        single.mkdir()
        t = time.perf_counter()
        edit_one(pipe, path, single)
        first_s = time.perf_counter() - t
        n_faces = len(pipe.prepare(path, face="all").faces)
        floor_s, _ = _timed(lambda: io_floor(path, single), repeats)
        e2e_s, written = _timed(lambda: edit_one(pipe, path, single), repeats)
        with Image.open(written) as im:
            assert im.size == (SIDE, SIDE) and im.format == "JPEG"
        parts = stages(pipe, path, single, repeats)
        held = hold_cost(pipe, path, repeats)

        # 3. the batch, as the CLI loops over a folder
        batch_out, floor_out = work / "batch", work / "floor"
        batch_out.mkdir()
        floor_out.mkdir()
        found, problems = collect_inputs([str(work / "photos")])
        assert len(found) == n_batch and not problems
        t = time.perf_counter()
        for p in found:
            io_floor(p, floor_out)
        batch_floor_s = time.perf_counter() - t
        t = time.perf_counter()
        for p in found:
            edit_one(pipe, p, batch_out)
        batch_s = time.perf_counter() - t
        assert len(list(batch_out.iterdir())) == n_batch
    finally:
        shutil.rmtree(work, ignore_errors=True)

    e2e, floor = _ms(e2e_s), _ms(floor_s)
    rate, floor_rate = n_batch / batch_s, n_batch / batch_floor_s
    print()
    print(
        f"model: image_size {cfg.image_size}, latent {cfg.latent_dim}, channels {cfg.channels}, "
        f"{params / 1e6:.2f} M parameters; faces found in the photo: {n_faces}"
    )
    print()
    w = 46
    print(f"{'measurement':<{w}} {'median ms':>10} {'reference ms':>13} {'ratio':>8}")
    print(f"{'model load (EditPipeline.from_pretrained)':<{w}} {_ms(t_load):>10.1f}")
    print(f"{'  ConceptVAE.from_pretrained':<{w}} {_ms(t_vae):>10.1f}")
    print(f"{'  VectorBank.load':<{w}} {_ms(t_bank):>10.1f}")
    print(f"{'  model_hash (checks the bank)':<{w}} {_ms(t_hash):>10.1f}")
    print(f"{'first photo (cold: cascades, kernels)':<{w}} {1000 * first_s:>10.1f}")
    label = f"one {SIDE}x{SIDE} photo, end to end"
    print(f"{label:<{w}} {e2e:>10.1f} {floor:>13.1f} {e2e / floor:>7.1f}x")
    print(f"{'':<{w}} vs. read_image + write_image of the same photo (I/O floor)")
    for name, times in parts.items():
        print(f"{'  ' + name:<{w}} {_ms(times):>10.1f}")
    print(f"{'  (sum of the stages)':<{w}} {sum(_ms(t) for t in parts.values()):>10.1f}")
    if held is not None:
        label = f"  step of {held['edit']}, holding {held['labels_held']} labels"
        print(f"{label:<{w}} {held['median_ms']:>10.1f} {held['reference_median_ms']:>13.1f} "
              f"{held['ratio']:>7.1f}x")  # fmt: skip
        print(f"{'':<{w}} vs. the same step without the hold")
        label = "  the same, next strength of the face"
        print(f"{label:<{w}} {held['sweep_median_ms']:>10.1f} {held['reference_median_ms']:>13.1f} "
              f"{held['sweep_ratio']:>7.1f}x")  # fmt: skip
    print()
    print(f"{'batch':<{w}} {'photos/s':>10} {'floor photos/s':>15} {'ratio':>6}")
    label = f"{n_batch} photos, CLI loop in one process"
    print(f"{label:<{w}} {rate:>10.2f} {floor_rate:>15.2f} {floor_rate / rate:>5.1f}x")
    print(f"{'':<{w}} (ratio: the I/O floor's rate over the edit's, i.e. times slower)")

    return write_report(
        args.out,
        "edit",
        info,
        settings={
            "run": args.run or "random default-size model (ConceptVAE(VAEConfig(image_size=64)))",
            "device": str(device),
            "repeats": repeats,
            "batch": n_batch,
            "quick": args.quick,
            "photo": f"{SIDE}x{SIDE} JPEG q95 with EXIF, one SynthFaces face at ~3x",
            "edit": EDIT,
            "blend": pipe.blend,
            "model": {"config": cfg.to_dict(), "parameters": params},
        },
        load={
            "pipeline_ms": _ms(t_load),
            "model_ms": _ms(t_vae),
            "bank_ms": _ms(t_bank),
            "hash_ms": _ms(t_hash),
            "seconds": t_load,
        },
        single={
            "first_call_ms": 1000 * first_s,
            "median_ms": e2e,
            "seconds": e2e_s,
            "reference": "read_image + write_image of the same photo (I/O floor)",
            "reference_median_ms": floor,
            "reference_seconds": floor_s,
            "ratio": e2e / floor,
            "faces_found": n_faces,
        },
        stages={name: {"median_ms": _ms(t), "seconds": t} for name, t in parts.items()},
        hold=held,
        batch={
            "photos": n_batch,
            "seconds": batch_s,
            "photos_per_s": rate,
            "reference": "read_image + write_image of the same files (I/O floor)",
            "reference_seconds": batch_floor_s,
            "reference_photos_per_s": floor_rate,
            "ratio": floor_rate / rate,
        },
    )


if __name__ == "__main__":
    main()

"""``conceptvae demo``: the whole project in one folder of pictures, made in about a minute.

:func:`run_demo` renders a fresh SynthFaces test set (a seed no shipped model was trained on),
loads the shipped model ``synthfaces64`` (or, with ``from_scratch``, trains one within a CPU
budget) and writes, into a folder published atomically:

- ``smile_edit.png``: 8 test faces labelled not smiling, before and after the Smiling edit at the
  strength the evaluation finds reaching 90% success (1.5 when it cannot tell);
- ``sweep.png`` / ``sweep.gif``: one face along Smiling from -2 to +2;
- ``interpolation.png``: slerp between two faces;
- ``plane.png``: one face on the Smiling (across) x Male (down) plane;
- ``samples.png``: 64 prior samples;
- ``photo_before.png`` / ``photo_edit.png``: a face in a larger picture, found, aligned, edited
  and put back (PNG, so "every pixel off the face is untouched" can be checked exactly);
- ``report/``: the evaluation report (:func:`conceptvae.evaluate.evaluate`) on the test set;
- ``hero.png``: the photo edit and the sweep in one picture, for the top of a README;
- ``README.md``: what each file is, the model, the command and the time taken.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from conceptvae.errors import DataError, ModelError

DEFAULT_MODEL = "synthfaces64"
TEST_SEED = 2026  # the shipped model was trained on seed 0: these people are new to it
TRAIN_SEED = 0
EDIT = "Smiling"
PLANE_Y = "Male"
DEFAULT_STRENGTH = 1.5  # when the evaluation cannot say which strength reaches 90%
PHOTO_SIZE = (800, 600)  # (W, H) of the picture the photo edit happens in
PHOTO_SCALE = 1.5
PHOTO_ROLL = 8.0  # degrees
CELL = 128  # px per face in the grids (2x a 64 px model: crisp pixels)
PHOTO_CENTRE = (0.56, 0.5)  # where the face goes, as fractions of (W, H)
HERO_SIDE = 320  # px of each photo detail in hero.png
SAMPLE_SEED = 0

FILES = {
    "smile_edit.png": "test faces labelled not smiling (and not blurry): as they are (top) and "
    "after the Smiling edit (bottom)",
    "sweep.png": "one face along the Smiling vector, strength -2 to +2",
    "sweep.gif": "the same sweep as an animation",
    "interpolation.png": "slerp in latent space between two test faces (the photos at the ends)",
    "plane.png": "one face edited along Smiling (across) and Male (down) at once",
    "samples.png": "64 faces decoded from random latents (prior samples, temperature 1)",
    "photo_before.png": "a test face pasted into a larger picture, scaled and tilted: the input",
    "photo_edit.png": "that picture after `EditPipeline(photo, 'Smiling', s)`: the face found, "
    "aligned, edited and put back; every pixel off the face is unchanged",
    "hero.png": "the photo edit and the sweep in one picture",
    "report/": "the evaluation report: edit success, leakage and SSIM per attribute and method "
    "(report.md, report.json, plots)",
    "README.md": "this file",
}


@dataclass(frozen=True)
class DemoSizes:
    """How big each part of the demo is: the defaults fit a minute on a 2-core CPU (the
    shipped model) or ~20 minutes with ``from_scratch``; :data:`FAST` is for tests."""

    test_faces: int = 1000
    train_faces: int = 6000
    train_epochs: int = 40
    train_batch: int = 64
    train_minutes: float = 15.0
    judge_minutes: float = 3.0
    judge_epochs: int = 10
    attributes: tuple[str, ...] = ("Smiling", "Eyeglasses", "Male", "Mouth_Slightly_Open")
    methods: tuple[str, ...] = ("mean", "balanced", "classifier", "conditional")
    strengths: tuple[float, ...] = (0.5, 1, 1.5, 2, 3)
    n_faces: int = 50
    n_samples: int = 200
    n_recon: int = 200
    edit_faces: int = 8
    sweep: tuple[float, ...] = (-2, -1, 0, 1, 2)
    gif_frames: int = 13
    interp_steps: int = 8
    plane: tuple[float, ...] = (-2, -1, 0, 1, 2)
    samples: int = 64
    model_overrides: dict[str, Any] = field(default_factory=dict)


FULL = DemoSizes()
FAST = DemoSizes(
    test_faces=40,
    train_faces=80,
    train_epochs=1,
    train_batch=16,
    train_minutes=0.5,
    judge_minutes=0.2,
    judge_epochs=1,
    attributes=("Smiling", "Male"),
    methods=("mean", "balanced"),
    strengths=(1, 2),
    n_faces=5,
    n_samples=16,
    n_recon=16,
    edit_faces=4,
    sweep=(-2, 0, 2),
    gif_frames=3,
    interp_steps=3,
    plane=(-1, 1),
    samples=16,
    model_overrides={"latent_dim": 8, "patch_size": 16, "channels": (8,)},
)


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(4, n))


class _Log:
    """One line per step, with the step's time."""

    def __init__(self, log: Callable[[str], None] | None) -> None:
        self.log = log
        self.start = self.last = time.perf_counter()

    def __call__(self, message: str) -> None:
        now = time.perf_counter()
        if self.log is not None:
            self.log(f"{message} ({now - self.last:.1f} s)")
        self.last = now

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def run_demo(
    out: str | os.PathLike = "demo",
    *,
    model: str | os.PathLike = DEFAULT_MODEL,
    judge: str | os.PathLike | None = None,
    from_scratch: bool = False,
    fast: bool = False,
    force: bool = False,
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = print,
    command: str = "conceptvae demo",
) -> dict[str, Any]:
    """Make the demo folder ``out`` (see the module docstring); returns a summary dict
    (``out``, ``seconds``, ``model``, ``strength``, ``strength_source``, ``files``).

    ``model``: a run folder or a shipped model's name, with concept vectors and a ``judge/``
    folder (``judge`` overrides where the judge is). ``from_scratch``: train the model, its
    vectors and its judge first, on freshly rendered SynthFaces (the run is kept in
    ``out/model``). ``fast``: tiny sizes, for tests. ``log``: called with one line per step
    (None: quiet). A non-empty ``out`` raises :class:`~conceptvae.errors.OutputError` unless
    ``force``; ``out`` is replaced only once the new folder is complete.
    """
    from conceptvae._fs import atomic_write_text, check_output_dir, staged_dir
    from conceptvae.pretrained import resolve

    sizes = FAST if fast else FULL
    out = Path(out)
    check_output_dir(out, force)  # refuse before any work
    device = torch.device(device)
    step = _Log(log)
    run_dir = None if from_scratch else resolve(model)
    if run_dir is not None:
        _check_model(run_dir, judge)
    with (
        tempfile.TemporaryDirectory(prefix="conceptvae-demo-") as tmp,
        staged_dir(out, force) as stage,
    ):
        tmp = Path(tmp)
        if from_scratch:
            run_dir = _train_from_scratch(tmp, stage / "model", sizes, device, step)
            judge = None
        assert run_dir is not None
        summary = _make(stage, tmp, run_dir, judge, sizes, device, step, from_scratch)
        summary["model"] = "trained from scratch (model/)" if from_scratch else str(model)
        summary["out"] = out
        atomic_write_text(stage / "README.md", _readme(summary, command, step.elapsed, sizes))
    seconds = step.elapsed
    if log is not None:
        log(f"wrote the demo to {out} in {seconds:.0f} s")
    summary.update(out=out, seconds=seconds)
    return summary


def _check_model(run_dir: Path, judge: str | os.PathLike | None) -> None:
    """Fail before any work when the model, its vectors or its judge are missing."""
    from conceptvae.evaluate import JUDGE_DIR, JUDGE_JSON

    if not (run_dir / "config.json").is_file():
        if not run_dir.exists() and os.sep not in str(run_dir):
            raise ModelError(
                f"the shipped model {run_dir} is not installed: reinstall conceptvae, or train "
                "one with --from-scratch"
            )
        raise ModelError(
            f"no model at {run_dir} (config.json not found): give a run folder, or train one "
            "with --from-scratch"
        )
    if not (run_dir / "vectors.json").is_file():
        raise ModelError(
            f"the model in {run_dir} has no concept vectors: run `conceptvae vectors "
            f"{run_dir} DATA` first"
        )
    where = Path(judge) if judge is not None else run_dir / JUDGE_DIR
    if not (where / JUDGE_JSON).is_file():
        raise ModelError(
            f"no judge at {where} ({JUDGE_JSON} not found): the demo's report needs one; pass "
            "--judge DIR (see `conceptvae evaluate`)"
        )


# ---------------------------------------------------------------------------------------------
# data and training


def _render(folder: Path, n: int, seed: int, size: int, step: _Log, what: str):
    """SynthFaces ``n`` from ``seed`` rendered into ``folder/faces``, prepared at ``size`` px;
    returns (the dataset, its cache)."""
    from conceptvae.data import open_dataset
    from conceptvae.data.cache import prepare
    from conceptvae.data.synth import write_synthfaces

    workers = _workers()
    write_synthfaces(folder / "faces", n=n, seed=seed, workers=workers, progress=False)
    ds = open_dataset(folder / "faces")
    cache = prepare(ds, folder / f"cache{size}", image_size=size, workers=workers,
                    progress=False)  # fmt: skip
    step(f"rendered {n:,} SynthFaces {what} (seed {seed}) and prepared them at {size} px")
    return ds, cache


def _train_from_scratch(
    tmp: Path, model_dir: Path, sizes: DemoSizes, device: torch.device, step: _Log
) -> Path:
    """Render a training set, train a model, fit its vectors and train its judge; the run
    (weights, vectors, judge, no checkpoint) ends in ``model_dir``."""
    from conceptvae.evaluate import JUDGE_DIR, train_judge
    from conceptvae.train import TrainConfig, model_config_for, train
    from conceptvae.vectors import fit_vectors, save_report

    size = 64
    _, cache = _render(tmp / "train", sizes.train_faces, TRAIN_SEED, size, step,
                       "for training")  # fmt: skip
    run = tmp / "run"
    config = TrainConfig(
        epochs=sizes.train_epochs,
        batch_size=sizes.train_batch,
        max_minutes=sizes.train_minutes,
        device=str(device),
        seed=TRAIN_SEED,
        sample_every_epoch=False,
        probe=False,
    )
    vae = train(cache, run, model_config_for(cache, **sizes.model_overrides), config,
                progress=False)  # fmt: skip
    step(f"trained a model ({sizes.train_epochs} epochs or {sizes.train_minutes:g} min at most)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # labels SynthFaces never draws: no vector, as expected
        bank, report = fit_vectors(vae, cache, run, progress=False)
    bank.save(run)
    save_report(report, run)
    step(f"fitted {len(bank)} concept vectors (mean difference)")
    train_judge(cache, run / JUDGE_DIR, epochs=sizes.judge_epochs, max_minutes=sizes.judge_minutes,
                device=device, progress=False)  # fmt: skip
    step(f"trained the judge (at most {sizes.judge_minutes:g} min)")
    model_dir.mkdir()
    for name in os.listdir(run):
        src = run / name
        if name.startswith(("config", "model", "vectors", "footprints")) and src.is_file():
            shutil.copy2(src, model_dir / name)
    shutil.copytree(run / JUDGE_DIR, model_dir / JUDGE_DIR)
    return model_dir


# ---------------------------------------------------------------------------------------------
# the pictures


def _make(stage, tmp, run_dir, judge_dir, sizes, device, step, from_scratch) -> dict[str, Any]:
    from conceptvae import evaluate as E
    from conceptvae.edit import EditPipeline

    pipe = EditPipeline.from_pretrained(run_dir, device=device)
    vae = pipe.vae
    size = vae.config.image_size
    judge = E.Judge.load(Path(judge_dir) if judge_dir else run_dir / E.JUDGE_DIR, device=device)
    d_edit, d_y = pipe.direction(EDIT), pipe.direction(PLANE_Y)  # a bank without them: say so
    if judge.image_size != size:
        raise ModelError(
            f"the judge takes {judge.image_size} px images but the model {size} px: use a judge "
            "trained at the model's size"
        )
    if not from_scratch:
        step(f"loaded the model {run_dir} ({size} px, latent {vae.config.latent_dim})")
    ds, cache = _render(tmp / "test", sizes.test_faces, TEST_SEED, size, step, "as a test set")

    # -- the evaluation first: it says how strong the smile edit has to be
    judged = set(judge.judged())
    attributes = [a for a in sizes.attributes if a in judged and a in cache.attr_names]
    result = E.evaluate(
        vae, cache, None, judge, methods=sizes.methods, strengths=sizes.strengths,
        attributes=attributes, n_faces=sizes.n_faces, n_samples=sizes.n_samples,
        n_recon=sizes.n_recon, progress=False, calibrated=False,
    )  # fmt: skip
    E.write_report(result, stage / "report")
    method = str(pipe.bank.metadata.get("method", "mean")) if pipe.bank is not None else "mean"
    strength, source = _smile_strength(result, method, pipe.bank)
    if result.get("status") == "ok" and attributes:
        step(f"evaluated {', '.join(attributes)} x {len(sizes.methods)} methods: report/")
    else:
        step("evaluated reconstruction only (the judge passes none of the demo's attributes)")

    # -- faces of the test set, encoded as the pipeline sees photos (already aligned)
    paths = {name: ds.image_dir / name for name in ds.filenames}
    names = list(cache.filenames)
    labels = np.asarray(cache.labels)
    part = np.asarray(cache.partition)
    smile = cache.attr_names.index(EDIT)

    def has(i: int, name: str) -> bool:
        return name in cache.attr_names and bool(labels[i, cache.attr_names.index(name)])

    order = np.concatenate([np.flatnonzero(part == p) for p in (2, 1, 0)]).tolist()  # test first
    order.sort(key=lambda i: has(i, "Blurry"))  # sharp faces first (a stable sort)
    plain = [i for i in order if labels[i, smile] == 0]
    chosen = (plain + [i for i in order if labels[i, smile] == 1])[: sizes.edit_faces]
    faces = [pipe.prepare(paths[names[i]], align=False).faces[0] for i in chosen]
    # the other end of the interpolation: someone of the other sex, for a longer walk
    other = next((i for i in order if has(i, PLANE_Y) != has(chosen[0], PLANE_Y)), chosen[-1])

    top = torch.stack([_crop(f) for f in faces])
    bottom = torch.cat([pipe.crops(f, (f.z + strength * d_edit)[None]) for f in faces])
    _grid(
        torch.stack([top, bottom]), stage / "smile_edit.png", cell=CELL,
        row_labels=["as rendered", f"{EDIT} +{strength:.2f}"],
        title=f"{EDIT} + {strength:.2f} ({source}) on test faces labelled not smiling",
    )  # fmt: skip
    step(f"smile_edit.png: {len(faces)} faces, {EDIT} at {strength:.2f} ({source})")

    from conceptvae.grids import interpolate, save_gif, strip
    from conceptvae.images import tensor_to_pil

    f0 = faces[0]
    sweep = pipe.crops(f0, torch.stack([f0.z + float(s) * d_edit for s in sizes.sweep]))
    sweep_img = strip(sweep, list(sizes.sweep), title=f"{EDIT} (strength)", cell=CELL)
    _save(sweep_img, stage / "sweep.png")
    frames = np.linspace(min(sizes.sweep), max(sizes.sweep), sizes.gif_frames)
    gif = pipe.crops(f0, torch.stack([f0.z + float(s) * d_edit for s in frames]))
    save_gif([_upscale(tensor_to_pil(c)) for c in gif], stage / "sweep.gif")
    step("sweep.png, sweep.gif")

    fb = pipe.prepare(paths[names[other]], align=False).faces[0]
    zs = interpolate(f0.z, fb.z, sizes.interp_steps, "slerp")
    row = torch.cat([_crop(f0)[None], pipe.crops(f0, zs, residual=False), _crop(fb)[None]])
    ts = [f"{t:.2f}".rstrip("0").rstrip(".") for t in np.linspace(0, 1, sizes.interp_steps)]
    _grid(row[None], stage / "interpolation.png", cell=CELL,
          col_labels=["face A", *ts, "face B"], title="slerp from A to B")  # fmt: skip
    step("interpolation.png")

    ys = xs = list(sizes.plane)
    zs = torch.stack([f0.z + float(b) * d_y + float(a) * d_edit for b in ys for a in xs])
    plane = pipe.crops(f0, zs).reshape(len(ys), len(xs), 3, size, size)
    _grid(plane, stage / "plane.png", cell=CELL, col_labels=xs, row_labels=ys,
          title=f"{EDIT} (across) x {PLANE_Y} (down)")  # fmt: skip
    step("plane.png")

    from conceptvae.train import sample_grid, save_png

    save_png(sample_grid(vae, sizes.samples, 1.0, SAMPLE_SEED), stage / "samples.png")
    step(f"samples.png: {sizes.samples} prior samples")

    before, after, which = _photo_edit(pipe, [paths[names[i]] for i in chosen], strength, stage)
    step(f"photo_before.png, photo_edit.png: found, aligned, edited, put back ({which})")

    hero = _hero(before, after, sweep_img, strength)
    _save(hero, stage / "hero.png")
    step("hero.png")
    return {
        "strength": strength,
        "strength_source": source,
        "method": method,
        "attributes": attributes,
        "evaluation": result,
        "model_hash": pipe.model_hash,
        "image_size": size,
        "latent_dim": vae.config.latent_dim,
        "test_faces": len(cache),
        "files": sorted(FILES) + (["model/"] if from_scratch else []),
    }


def _smile_strength(result: dict[str, Any], method: str, bank: Any = None) -> tuple[float, str]:
    """Strength 1 when the bank's Smiling vector is calibrated; else the strength at which the
    evaluation saw ``method``'s Smiling vector add a smile to 90% of the faces; and where the
    number came from."""
    cal = (bank.metadata.get("calibration", {}) if bank is not None else {}).get(EDIT) or {}
    if cal.get("scale") == "judge":
        share = (cal.get("add") or {}).get("success_at_1") or cal.get("target", 0.98)
        return 1.0, f"calibrated: strength 1 adds a smile to {share:.0%} of held-out faces"
    e = (result.get("edits") or {}).get(EDIT) or {}
    m = (e.get("methods") or {}).get(method) or (e.get("methods") or {}).get("mean") or {}
    s90 = (m.get("add") or {}).get("strength_90")
    if s90 is None or not math.isfinite(s90) or s90 <= 0:
        return DEFAULT_STRENGTH, "default: the evaluation did not reach 90%"
    return round(float(s90), 2), "90% success in the evaluation"


def _crop(face) -> torch.Tensor:
    """The aligned crop of a face, (3, S, S) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(face.aligned.crop.transpose(2, 0, 1))) / 255.0


def _upscale(im: Image.Image) -> Image.Image:
    k = max(1, CELL // im.height)
    return im.resize((im.width * k, im.height * k), Image.Resampling.NEAREST)


def _save(im: Image.Image, path: Path) -> None:
    from conceptvae.images import write_image

    write_image(im, path)


def _grid(images: torch.Tensor, path: Path, **kwargs: Any) -> None:
    from conceptvae.grids import image_grid

    _save(image_grid(images, **kwargs), path)


def _background(w: int, h: int) -> np.ndarray:
    """A soft two-colour gradient with a vignette, (H, W, 3) uint8."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (0.6 * x / w + 0.4 * y / h)[..., None]
    a = np.array([236, 226, 208], np.float32)  # warm paper
    b = np.array([150, 176, 196], np.float32)  # dusty blue
    g = a * (1 - t) + b * t
    r = np.hypot((x - w / 2) / w, (y - h / 2) / h)[..., None]
    g *= 1.0 - 0.25 * r**2
    return np.clip(np.rint(g), 0, 255).astype(np.uint8)


def _place(face: np.ndarray, w: int, h: int) -> np.ndarray:
    """``face`` (an aligned 178 x 218 image) scaled, tilted and blended into a background."""
    import cv2

    fh, fw = face.shape[:2]
    a = math.radians(PHOTO_ROLL)
    A = PHOTO_SCALE * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([w * PHOTO_CENTRE[0], h * PHOTO_CENTRE[1]])
    M = np.hstack([A, (centre - A @ np.array([fw / 2, fh / 2]))[:, None]])
    # a soft-edged oval: the face's own background fades into the picture's
    yy, xx = np.mgrid[0:fh, 0:fw].astype(np.float32)
    r = np.hypot((xx - fw / 2) / (0.5 * fw), (yy - fh * 0.52) / (0.5 * fh))
    alpha = np.clip((1.0 - r) / 0.25, 0, 1)
    warped = cv2.warpAffine(face, M, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
    m = cv2.warpAffine(alpha, M, (w, h), flags=cv2.INTER_LINEAR)[..., None]
    out = _background(w, h) * (1 - m) + warped * m
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _photo_edit(pipe, candidates: Sequence[Path], strength: float, stage: Path):
    """The first candidate face the detector finds in its picture, edited end to end."""
    from conceptvae.images import read_image, write_image

    w, h = PHOTO_SIZE
    problems = []
    for path in candidates:
        photo = _place(np.asarray(read_image(path).image), w, h)
        before = stage / "photo_before.png"
        write_image(Image.fromarray(photo), before)
        try:
            after = pipe(before, EDIT, strength)
        except DataError as e:  # no face found in this one: try the next
            problems.append(f"{path.name}: {e}")
            continue
        write_image(after, stage / "photo_edit.png")
        with Image.open(before) as im:
            return im.convert("RGB"), after, path.name
    raise DataError(
        "the face detector found no face in any of the demo's pictures: " + "; ".join(problems[:3])
    )


def _hero(before: Image.Image, after: Image.Image, sweep: Image.Image, strength: float):
    """The photo around the face, before | after, above the sweep strip, on white."""
    from conceptvae.grids import image_grid

    w, h = before.size
    side = min(w, h, round(1.3 * PHOTO_SCALE * 218))  # the face and some picture around it
    cx, cy = round(w * PHOTO_CENTRE[0]), round(h * PHOTO_CENTRE[1])
    x0, y0 = min(max(cx - side // 2, 0), w - side), min(max(cy - side // 2, 0), h - side)
    box = (x0, y0, x0 + side, y0 + side)
    small = [
        im.crop(box).resize((HERO_SIDE, HERO_SIDE), Image.Resampling.LANCZOS)
        for im in (before, after)
    ]
    top = image_grid([small], col_labels=["photo_before.png", f"photo_edit.png: {EDIT} "
                     f"+{strength:.2f}"], pad=6)  # fmt: skip
    width = max(top.width, sweep.width)
    hero = Image.new("RGB", (width, top.height + sweep.height + 8), (255, 255, 255))
    hero.paste(top, ((width - top.width) // 2, 0))
    hero.paste(sweep, ((width - sweep.width) // 2, top.height + 8))
    return hero


# ---------------------------------------------------------------------------------------------
# README


def _readme(summary: dict[str, Any], command: str, seconds: float, sizes: DemoSizes) -> str:
    lines = [
        "# conceptvae demo",
        "",
        f"Made by `{command}` in {seconds:.0f} s. Model: {summary['model']} "
        f"({summary['image_size']} px, latent {summary['latent_dim']}, hash "
        f"`{summary['model_hash'][:12]}`). Test faces: {summary['test_faces']} SynthFaces "
        f"rendered with seed {TEST_SEED}, people the model has not seen.",
        "",
        f"The Smiling edit uses strength {summary['strength']:.2f} "
        f"({summary['strength_source']}, {summary['method']} vectors).",
        "",
        "| file | what it is |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {text} |" for name, text in FILES.items()]
    if "model/" in summary["files"]:
        lines.append(
            "| `model/` | the model trained for this demo, with its concept vectors and judge: "
            f"use it as RUN, e.g. `conceptvae edit {summary['out'] / 'model'} photo.jpg "
            "--edit Smiling+1.5` |"
        )
    lines += ["", "## Evaluation (report/report.md)", ""]
    result = summary["evaluation"]
    rec = result.get("reconstruction") or {}
    if rec:
        lines.append(
            f"Reconstruction of {rec.get('n', 0)} test faces: PSNR {rec.get('psnr', 0):.2f} dB, "
            f"SSIM {rec.get('ssim', 0):.3f}."
        )
        lines.append("")
    if result.get("status") != "ok" or not result.get("edits"):
        lines.append(str(result.get("message", "no attribute was judged")))
    else:
        lines.append("Strength each method needs to add the attribute to 90% of the faces:")
        lines.append("")
        methods = list(result["settings"]["methods"])
        lines.append("| attribute | " + " | ".join(methods) + " |")
        lines.append("| --- |" + " --- |" * len(methods))
        for attr, info in result["edits"].items():
            cells = []
            for m in methods:
                add = ((info.get("methods") or {}).get(m) or {}).get("add") or {}
                s90 = add.get("strength_90")
                cells.append("< 90%" if s90 is None else f"{s90:.2f}")
            lines.append(f"| {attr} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Settings: {len(sizes.methods)} methods, strengths {list(sizes.strengths)}, up to "
        f"{sizes.n_faces} faces per attribute and direction.",
        "",
    ]
    return "\n".join(lines)

"""`conceptvae demo` in its fast mode, on a tiny random model with random vectors and a judge
trained for one epoch: every promised file is written and reads back, the README names them,
the photo edit keeps the photo's size and every pixel away from the face, and a non-empty
output folder is refused (untouched) without --force and replaced with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_edit import make_run

from attributes.bank import VectorBank
from conceptvae.cli import cli
from conceptvae.data import CELEBA_ATTRIBUTES, open_dataset
from conceptvae.data.cache import prepare
from conceptvae.data.synth import write_synthfaces
from conceptvae.demo import CELL, DEFAULT_STRENGTH, FAST, FILES, PHOTO_SIZE, run_demo
from conceptvae.evaluate import JUDGE_DIR, train_judge
from conceptvae.model import ConceptVAE

torch.set_num_threads(1)

# a random-init model reconstructs nothing well: the pipeline's warning says so every time
pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")

PICTURES = [name for name in FILES if name.endswith((".png", ".gif"))]
# the smallest (width, height) of each picture at the FAST sizes
MIN_SIZE = {
    "smile_edit.png": (FAST.edit_faces * CELL, 2 * CELL),
    "sweep.png": (len(FAST.sweep) * CELL, CELL),
    "sweep.gif": (CELL, CELL),
    "interpolation.png": ((FAST.interp_steps + 2) * CELL, CELL),
    "plane.png": (len(FAST.plane) * CELL, len(FAST.plane) * CELL),
    "samples.png": (4 * 64, 4 * 64),  # 16 samples of a 64 px model, 4 x 4
    "photo_before.png": PHOTO_SIZE,
    "photo_edit.png": PHOTO_SIZE,
    "hero.png": (2 * 320, 320),
}


def check_pictures(out):
    """Every picture reads back, is at least its expected size and is not blank."""
    assert sorted(MIN_SIZE) == sorted(PICTURES)
    for name in PICTURES:
        with Image.open(out / name) as im:
            im.load()
            w, h = MIN_SIZE[name]
            assert im.width >= w and im.height >= h, (name, im.size)
            if name.endswith(".gif"):
                assert im.n_frames == 2 * FAST.gif_frames - 2  # played back and forth
            pixels = np.asarray(im.convert("RGB"), dtype=np.float32)
        assert pixels.std() > 10, f"{name} is blank"  # faces, not one flat colour


def check_report(report):
    """report.json holds the reconstruction numbers, the judge of every attribute and the
    run's settings; report.md shows the same PSNR."""
    data = json.loads((report / "report.json").read_text(encoding="utf-8"))
    # a one-epoch judge judges nothing: the report says so instead of scoring edits
    assert data["status"] in ("ok", "no_judged_attributes")
    assert data["status"] == "ok" or "judge" in data["message"]
    rec = data["reconstruction"]
    assert 0 < rec["n"] <= FAST.test_faces and 5 < rec["psnr"] < 60 and 0 < rec["ssim"] <= 1
    assert sorted(data["judge"]["accuracy"]) == sorted(CELEBA_ATTRIBUTES)
    assert data["settings"]["methods"] == list(FAST.methods)
    assert data["settings"]["strengths"] == [float(x) for x in FAST.strengths]
    md = (report / "report.md").read_text(encoding="utf-8")
    assert "## Reconstruction" in md and f"{rec['psnr']:.2f}" in md
    return data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random-init model, random Smiling/Male/Eyeglasses vectors, a one-epoch judge."""
    root = tmp_path_factory.mktemp("demo")
    run = make_run(root / "run")
    write_synthfaces(root / "faces", n=40, seed=5, workers=1, progress=False)
    cache = prepare(open_dataset(root / "faces"), root / "cache", image_size=64, workers=1,
                    progress=False)  # fmt: skip
    train_judge(cache, run / JUDGE_DIR, epochs=1, batch_size=16, widths=(8, 16, 16, 16),
                progress=False)  # fmt: skip
    return run


@pytest.fixture(scope="module")
def demo(model_dir):
    """The demo made once through the command line."""
    out = model_dir.parent / "out"
    result = CliRunner().invoke(cli, ["demo", "-o", str(out), "--model", str(model_dir), "--fast"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_every_file_and_they_read_back(demo):
    out, output = demo
    check_pictures(out)
    check_report(out / "report")
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".out")]  # no stage
    assert "wrote the demo to" in output and output.count("\n") >= 8  # a line per step


def test_readme_names_every_file(demo):
    out, _ = demo
    readme = (out / "README.md").read_text(encoding="utf-8")
    for name in FILES:
        assert f"`{name}`" in readme
    assert sorted(p.name for p in out.iterdir()) == sorted(n.rstrip("/") for n in FILES)
    assert "conceptvae demo" in readme and " s." in readme  # the command and the time
    psnr = check_report(out / "report")["reconstruction"]["psnr"]
    assert f"PSNR {psnr:.2f} dB" in readme  # the evaluation's numbers, not a placeholder


def test_photo_edit_keeps_the_size_and_every_pixel_away_from_the_face(demo):
    out, _ = demo
    with Image.open(out / "photo_before.png") as a, Image.open(out / "photo_edit.png") as b:
        assert a.size == b.size == (800, 600)
        before, after = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    # the face sits around (448, 300); the corners (120 x 160 px) are well away from it
    for top, left in [(0, 0), (0, 640), (480, 0), (480, 640)]:
        corner = np.s_[top : top + 120, left : left + 160]
        np.testing.assert_array_equal(before[corner], after[corner])
    assert (before != after).any()  # and the face did change


def test_a_non_empty_folder_is_refused_untouched_and_replaced_with_force(model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    args = ["demo", "-o", str(out), "--model", str(model_dir), "--fast"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "not empty" in lines[0] and "--force" in lines[0], result.output
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]  # no staging folder left

    summary = run_demo(out, model=model_dir, fast=True, force=True, log=None)
    assert not (out / "notes.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(n.rstrip("/") for n in FILES)
    # the one-epoch judge cannot measure a strength: the demo says it used its default
    assert summary["strength"] == DEFAULT_STRENGTH
    assert summary["strength_source"].startswith("default")
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert f"strength {DEFAULT_STRENGTH:.2f} ({summary['strength_source']}" in readme
    assert 0 < summary["seconds"] < 600


def test_a_model_without_a_judge_fails_before_any_work(model_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors", "vectors.json", "vectors.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    result = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "o"), "--model", str(bare)])
    assert result.exit_code != 0 and "no judge" in result.output
    assert not (tmp_path / "o").exists()


def test_from_scratch_trains_a_model_vectors_and_judge_and_keeps_them(tmp_path):
    """The --from-scratch path at tiny sizes (a 1-epoch model on 80 faces): it runs end to end
    and the trained run in model/ is usable as a RUN folder."""
    out = tmp_path / "scratch"
    result = CliRunner().invoke(cli, ["demo", "-o", str(out), "--from-scratch", "--fast"])
    assert result.exit_code == 0, result.output
    assert "trained a model" in result.output and "trained the judge" in result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [n.rstrip("/") for n in FILES] + ["model"]
    )
    check_pictures(out)
    check_report(out / "report")
    model = out / "model"
    judge = json.loads((model / JUDGE_DIR / "judge.json").read_text(encoding="utf-8"))
    assert judge["attributes"] == list(CELEBA_ATTRIBUTES)
    assert not (model / "checkpoint.pt").exists()
    vae = ConceptVAE.from_pretrained(model)
    bank = VectorBank.load(model, model_hash=vae.model_hash())
    assert "Smiling" in bank and "Male" in bank
    assert "`model/`" in (out / "README.md").read_text(encoding="utf-8")


def test_the_smile_strength_message_gives_the_share_the_calibration_measured():
    from conceptvae.demo import _smile_strength

    def bank(success):
        cal = {"Smiling": {"scale": "judge", "add": {"success_at_1": success}}}
        return VectorBank({"Smiling": np.ones(4)}, metadata={"calibration": cal})

    assert _smile_strength({}, "best", bank(0.97)) == (
        1.0, "calibrated: strength 1 adds a smile to 97% of held-out faces"
    )  # fmt: skip
    assert _smile_strength({}, "best", bank(0.98))[1].endswith("to 98% of held-out faces")

"""The scripts in examples/ run top to bottom on the shipped model (each in its own process, as a
user runs them) and write the pictures their docstrings promise, readable and of sensible
sizes. Skipped when the shipped model is not installed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attributes.bank import VectorBank

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "conceptvae" / "pretrained" / "synthfaces64" / "config.json"

pytestmark = pytest.mark.skipif(
    not SHIPPED.is_file(), reason=f"the shipped model is not installed ({SHIPPED} is missing)"
)


def run_example(name: str, *args: str | os.PathLike) -> str:
    """Run examples/NAME.py with ``args`` from the repository root; returns its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "examples" / f"{name}.py"), *map(str, args)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{name}.py failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def image(path: Path) -> Image.Image:
    assert path.is_file(), f"{path.name} was not written"
    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def test_smile_edit_makes_a_photo_and_edits_it(tmp_path):
    out = tmp_path / "new" / "out"  # created, parents too
    run_example("smile_edit", "-o", out)
    photo, smile, sweep = (image(out / n) for n in ("photo.png", "smile.png", "smile_sweep.png"))
    assert photo.size == smile.size == (640, 480)
    a, b = np.asarray(photo), np.asarray(smile)
    assert (a != b).any()  # the face changed
    assert (a[:40] == b[:40]).all() and (a[:, :100] == b[:, :100]).all()  # off the face: not
    assert sweep.height >= 192 and sweep.width >= 4 * 192  # 5 faces in a row, 192 px high

    jpeg = tmp_path / "me.jpg"  # a photo of the user's own, another format
    photo.save(jpeg, quality=95)
    run_example("smile_edit", jpeg, "-o", tmp_path / "mine")
    assert image(tmp_path / "mine" / "smile.png").size == (640, 480)
    assert not (tmp_path / "mine" / "photo.png").exists()


def test_own_labels_fits_a_bearded_vector_and_applies_it(tmp_path):
    stdout = run_example("own_labels", "-o", tmp_path, "--n", "200")
    assert "AUC" in stdout  # the quality report: a row per vector with its held-out AUC
    lines = stdout.splitlines()
    rows = {r.split()[0]: r.split() for r in lines if r.startswith(("Bearded ", "Male "))}
    assert sorted(rows) == ["Bearded", "Male"]
    assert all(0.5 < float(r[1]) <= 1.0 for r in rows.values())  # better than chance
    grid = image(tmp_path / "bearded.png")
    assert grid.width > 4 * 178 and 2 * 218 < grid.height < 3 * 218  # 2 rows of 4 faces
    assert np.asarray(grid, dtype=np.float32).std() > 10  # faces, not a blank canvas
    vae_hash = json.loads((SHIPPED.parent / "vectors.json").read_text())["metadata"]["model_hash"]
    bank = VectorBank.load(tmp_path / "own-vectors", model_hash=vae_hash)  # for the shipped model
    assert sorted(bank.names) == ["Bearded", "Male"] and bank.dim == 128
    assert np.isfinite(bank.vector("Bearded")).all()


def test_interpolation_grid_writes_the_grid_and_the_comparison(tmp_path):
    stdout = run_example("interpolation_grid", "-o", tmp_path, "--steps", "4")
    grid = image(tmp_path / "interp_grid.png")
    assert 4 * 128 <= grid.width < 5 * 128 and 4 * 128 <= grid.height < 5 * 128
    row = image(tmp_path / "lerp_vs_slerp.png")
    assert row.width > 4 * 128 and 2 * 128 <= row.height < 3 * 128
    assert "lerp" in stdout and "slerp" in stdout

"""EditPipeline's ``refine`` (Adam steps on z) and the ``poisson`` blend, on the tiny random
model of test_edit.py, with planted cases whose right answer is known.

- refine: a target image the decoder can draw exactly, ``D(z_true)``, that the encoder does not
  map to ``z_true`` (a face unlike anything the model learnt): refining must close most of the
  gap; refine=0 must be the posterior mean itself.
- poisson: a flat photo far brighter (or darker) than the decoded face: pasting the face
  (replace) leaves a step of the full colour offset at the mask's edge; the gradient-domain
  blend must take it away. Where the mask touches the photo's border, seamless cloning cannot
  run, and poisson must fall back to replace exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_edit import face_photo, make_run

import conceptvae.edit as edit_mod
from conceptvae.edit import EditPipeline, _crop_tensor, _seamless
from conceptvae.faces import photo_mask

# a random-init model reconstructs nothing well: the pipeline's warning says so every time
pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return EditPipeline.from_pretrained(make_run(tmp_path_factory.mktemp("refine") / "run"))


def recon_mse(pipe, z, target):
    with torch.no_grad():
        return (pipe.vae.decode(z).float() - target).square().flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------
# refine


def test_refine_zero_is_exactly_the_posterior_mean(pipe):
    prepared = pipe.prepare(Image.fromarray(face_photo()))
    crops = _crop_tensor(prepared.faces[0].aligned.crop)[None]
    with torch.no_grad():
        mean = pipe.vae.encode(crops).mean.float()
    assert torch.equal(prepared.faces[0].z, mean[0])
    assert torch.equal(pipe.encode(crops, refine=0), mean)
    assert torch.equal(pipe.encode(crops), mean)


def test_refine_fits_a_face_unlike_the_training_data_by_a_real_margin(pipe):
    g = torch.Generator().manual_seed(3)
    z_true = 2.0 * torch.randn(2, pipe.vae.config.latent_dim, generator=g)
    with torch.no_grad():
        target = pipe.vae.decode(z_true).float().clamp(0, 1)  # drawable exactly, at z_true
    before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}

    z0 = pipe.encode(target, refine=0)
    z100 = pipe.encode(target, refine=100)
    mse0, mse100 = recon_mse(pipe, z0, target), recon_mse(pipe, z100, target)
    # the encoder's mean is off (MSE 0.0073 and 0.0006 here); refining closes most of it
    assert (mse0 > 3e-4).all()
    gain_db = 10 * torch.log10(mse0 / mse100)
    assert (gain_db > 10).all(), gain_db
    # ... by moving z towards the latent that drew the target
    assert ((z100 - z_true).norm(dim=1) < 0.5 * (z0 - z_true).norm(dim=1)).all()
    # more steps, a better fit
    assert (recon_mse(pipe, pipe.encode(target, refine=20), target) > mse100).all()
    # the model is left as it was: same weights, trainable again
    after = pipe.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.requires_grad for p in pipe.vae.parameters())


def test_prepare_with_refine_keeps_the_refined_latent_and_its_psnr(pipe):
    photo = Image.fromarray(face_photo())
    plain = pipe.prepare(photo).faces[0]
    refined = pipe.prepare(photo, refine=30).faces[0]
    crops = _crop_tensor(refined.aligned.crop)[None]
    assert torch.equal(refined.z, pipe.encode(crops, refine=30)[0])
    assert not torch.equal(refined.z, plain.z)
    expected = -10 * torch.log10(recon_mse(pipe, refined.z[None], crops)).item()
    assert refined.psnr == pytest.approx(expected, abs=1e-3)
    assert refined.psnr > plain.psnr


# ---------------------------------------------------------------------------------------------
# poisson


def seam_jump(image: np.ndarray, mask: np.ndarray, width: int = 5) -> float:
    """Mean colour step across the mask's edge: the ``width``-pixel band just inside where the
    mask is full against the band just outside where it is 0 (mean absolute difference of the
    two bands' mean colours)."""
    kernel = np.ones((width, width), np.uint8)
    core = (mask >= 0.999).astype(np.uint8)
    inside = core.astype(bool) & ~cv2.erode(core, kernel).astype(bool)
    touched = cv2.dilate((mask > 0).astype(np.uint8), kernel).astype(bool)
    outside = (mask == 0) & touched
    assert inside.sum() > 100 and outside.sum() > 100
    a = image.astype(np.float64)
    return float(np.abs(a[inside].mean(0) - a[outside].mean(0)).mean())


@pytest.fixture
def clone_calls(monkeypatch):
    calls = []
    real = cv2.seamlessClone

    def spy(*args, **kwargs):
        calls.append(args[3])  # the centre
        return real(*args, **kwargs)

    monkeypatch.setattr(edit_mod.cv2, "seamlessClone", spy)
    return calls


@pytest.mark.parametrize("level", [230, 20])  # brighter and darker than the decoded face
def test_poisson_hides_a_colour_offset_at_the_seam_and_keeps_the_outside(pipe, level, clone_calls):
    rng = np.random.default_rng(level)
    # a flat 178 x 218 photo (CelebA's aligned shape: --no-align takes it as the frame), so the
    # photo itself has no step at the mask's edge
    photo = np.clip(level + rng.normal(0, 2, (218, 178, 3)), 0, 255).astype(np.uint8)
    prepared = pipe.prepare(Image.fromarray(photo), align=False)
    mask = photo_mask(prepared.faces[0].aligned, photo.shape, pipe.feather)
    replace = np.asarray(pipe(prepared, "Smiling", 1.0, blend="replace"))
    poisson = np.asarray(pipe(prepared, "Smiling", 1.0, blend="poisson"))
    assert len(clone_calls) == 1  # the mask is clear of the border: no fallback

    outside = mask == 0
    assert 0.5 < outside.mean() < 0.95
    np.testing.assert_array_equal(poisson[outside], photo[outside])
    np.testing.assert_array_equal(replace[outside], photo[outside])
    inner = mask > 0.5
    diff = np.abs(poisson.astype(int) - replace.astype(int))[inner]
    assert diff.mean() > 20 and (diff > 0).mean() > 0.9

    assert seam_jump(photo, mask) < 1.0
    jump_replace, jump_poisson = seam_jump(replace, mask), seam_jump(poisson, mask)
    assert jump_replace > 50  # the planted offset shows where the face is pasted
    assert jump_poisson < 0.1 * jump_replace and jump_poisson < 5, (jump_poisson, jump_replace)


def test_poisson_falls_back_to_replace_where_the_mask_touches_the_border(pipe, clone_calls):
    photo = face_photo(centre=(38, 150))  # the face at the left edge: its mask is cut there
    prepared = pipe.prepare(Image.fromarray(photo))
    mask = photo_mask(prepared.faces[0].aligned, photo.shape, pipe.feather)
    assert (mask[:, 0] > 0.5).any()
    replace = np.asarray(pipe(prepared, "Smiling", 1.0, blend="replace"))
    poisson = np.asarray(pipe(prepared, "Smiling", 1.0, blend="poisson"))
    assert clone_calls == []
    np.testing.assert_array_equal(poisson, replace)
    np.testing.assert_array_equal(poisson[mask == 0], photo[mask == 0])
    assert (poisson != photo).any(-1)[mask > 0.5].mean() > 0.5  # the edit is there

    # the same face away from the border is cloned
    moved = face_photo(centre=(180, 150))
    prepared = pipe.prepare(Image.fromarray(moved))
    away = np.asarray(pipe(prepared, "Smiling", 1.0, blend="poisson"))
    assert len(clone_calls) == 1
    assert not np.array_equal(away, np.asarray(pipe(prepared, "Smiling", 1.0, blend="replace")))


def test_seamless_returns_the_face_itself_for_a_border_or_empty_mask():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    warped = rng.uniform(0, 255, (40, 50, 3)).astype(np.float32)
    for y0, y1, x0, x1 in ((0, 20, 10, 30), (10, 40, 10, 30), (10, 20, 0, 30), (10, 20, 10, 50)):
        mask = np.zeros((40, 50), np.float32)
        mask[y0:y1, x0:x1] = 1.0  # touches one side of the border
        assert _seamless(pixels, warped, mask) is warped
    assert _seamless(pixels, warped, np.zeros((40, 50), np.float32)) is warped
    mask = np.zeros((40, 50), np.float32)
    mask[10:30, 10:40] = 1.0
    out = _seamless(pixels, warped, mask)
    assert out.dtype == np.float32 and out.shape == warped.shape
    # outside the mask the clone is the photo
    np.testing.assert_array_equal(out[mask == 0], pixels[mask == 0].astype(np.float32))

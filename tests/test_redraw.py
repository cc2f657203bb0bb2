"""How much of the decoded face the local blend redraws, chosen per vector and direction at
calibration: on planted faces where removing needs the photo's sharp detail redrawn and adding
does not, the choice, what the measured edits use, the bank's records replayed on an older
bank, and the edit pipeline's redraw map."""

import numpy as np
import pytest
import torch
from PIL import Image
from test_calibration import (
    BRIGHT,
    BRIGHT_CORE,
    FakeJudge,
    LinearVAE,
    planted_heldout,
    region_mean,
    train_cells,
)
from test_edit import face_photo, make_run

from attributes.bank import VectorBank
from conceptvae.calibration import (
    REDRAW_GRID,
    calibrate,
    choose_redraws,
    crop_edit,
    footprint_weight,
    measure_edits,
    redraw_of,
    redraw_weight,
)
from conceptvae.edit import EditPipeline
from conceptvae.vectors import describe_calibration

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")


def _sharp_faces(vae, held_z, held_y):
    """Photos of the planted held-out faces: those with Bright have a sharp BRIGHT square at
    1.0 where the model draws 0.5 + 0.1 z0 (< 0.7); those without are what the model draws."""

    def faces(idx):
        x = vae.decode(torch.from_numpy(held_z[idx]).float())
        sharp = torch.from_numpy(held_y[idx, 0] == 1)
        x[sharp, :, BRIGHT[0], BRIGHT[1]] = 1.0
        return x

    return faces


@pytest.fixture(scope="module")
def sharp():
    vae = LinearVAE()
    train_z, train_y = train_cells()
    held_z, held_y = planted_heldout()
    faces = _sharp_faces(vae, held_z, held_y)
    raw = {"Bright": np.array([1.0, 0, 0, 0]), "Hidden": np.array([0, 0, 2.0, 0])}
    kw = dict(faces=faces, held_idx=np.arange(200), held_z=held_z, held_labels=held_y,
              names=FakeJudge.names, train_labels=train_y)  # fmt: skip
    cal = calibrate(vae, FakeJudge(), raw, train_z=train_z, target=0.97, progress=False, **kw)
    return vae, cal, kw, train_z, train_y, held_z, held_y


def test_crop_edit_redraw_scales_how_much_of_the_decoded_face_shows():
    g = torch.Generator().manual_seed(3)
    x, d0, d1 = (torch.rand(2, 3, 16, 16, generator=g) for _ in range(3))
    w = torch.zeros(16, 16)
    w[4:12, 4:12] = 1.0
    w[2, 2] = 0.5
    full = crop_edit(x, d0, d1, "local", weight=w)
    assert torch.equal(crop_edit(x, d0, d1, "local", weight=w, redraw=1.0), full)
    # redraw 0: the change alone over the photo, confined to the footprint
    none = crop_edit(x, d0, d1, "local", weight=w, redraw=0.0)
    torch.testing.assert_close(none, (x + w * (d1 - d0)).clamp(0, 1))
    # a number g is the map g * w
    torch.testing.assert_close(
        crop_edit(x, d0, d1, "local", weight=w, redraw=0.25),
        crop_edit(x, d0, d1, "local", weight=w, redraw=0.25 * w),
    )
    inside = (x + (d1 - d0) + 0.25 * (d0 - x)).clamp(0, 1)[:, :, 4:12, 4:12]
    torch.testing.assert_close(
        crop_edit(x, d0, d1, "local", weight=w, redraw=0.25)[:, :, 4:12, 4:12], inside
    )


def test_calibration_redraws_for_removal_only_where_the_photo_is_sharper(sharp):
    """Adding to faces the model draws exactly needs no redraw: 0 is chosen. Removing from a
    sharp 1.0 square at the calibrated step (-1.94) leaves 1.0 - 0.194 - g (0.5 - 0.1 z0) in
    its core, bright (> 0.5) for most faces unless g is 1: the full redraw is kept."""
    _, cal, *_ = sharp
    rec = cal["calibration"]["Bright"]
    assert rec["unit"] == pytest.approx(0.97, abs=1e-6)  # the walk redraws fully, as before
    assert rec["unit"] * cal["removal_scale"]["Bright"] == pytest.approx(1.94, abs=1e-6)
    add, rem = rec["add"], rec["remove"]
    assert add["redraw"] == 0.0 and add["success_at_1"] == pytest.approx(0.97)
    assert add["redraw_curve"]["redraw"] == [1.0, 0.0]  # stops at the first that reaches it
    assert rem["redraw"] == 1.0 and rem["success_at_1"] == pytest.approx(0.97)
    curve = rem["redraw_curve"]
    assert curve["redraw"] == [1.0, *REDRAW_GRID]
    # g = 0.75: dark where 0.806 - 0.75 (0.5 - 0.1 z0) < 0.5, i.e. z0 < 0.92: 46 faces
    assert curve["success"][1:] == pytest.approx([0.0, 0.0, 0.0, 0.46])
    assert redraw_of(cal["calibration"], "Bright", "add") == 0.0
    assert redraw_of(cal["calibration"], "Bright", "remove") == 1.0
    assert redraw_of(cal["calibration"], "Hidden", "add") == 1.0  # no record: redraw fully


def test_measured_edits_use_the_chosen_redraw(sharp):
    vae, cal, kw, _, train_y, held_z, held_y = sharp
    res = measure_edits(
        vae, FakeJudge(), cal, "Bright", faces=kw["faces"], idx=np.arange(200), z=held_z,
        labels=held_y, names=FakeJudge.names, train_labels=train_y, judged=["Bright", "Red"],
        blends=("local",),
    )  # fmt: skip
    assert res["add"]["redraw"] == 0.0 and res["remove"]["redraw"] == 1.0
    assert res["add"]["local"]["success"] == pytest.approx(0.97)
    assert res["remove"]["local"]["success"] == pytest.approx(0.97)
    # with redraw 1 everywhere the sharp squares are redrawn by the null edit; Red never flips
    assert res["add"]["null"]["leakage_free"] == 0.0


def test_choose_redraws_replays_calibration_on_a_bank_without_them(sharp):
    vae, cal, kw, train_z, *_ = sharp
    old = {
        n: {k: ({kk: vv for kk, vv in v.items() if "redraw" not in kk}
                if isinstance(v, dict) else v) for k, v in r.items()}
        for n, r in cal["calibration"].items()
    }  # fmt: skip
    assert "redraw" not in old["Bright"]["add"]
    records = choose_redraws(
        vae, FakeJudge(), {**cal, "calibration": old}, n_train=train_z.shape[0],
        progress=False, **kw,
    )  # fmt: skip
    for d in ("add", "remove"):
        assert records["Bright"][d]["redraw"] == cal["calibration"]["Bright"][d]["redraw"]
        assert (
            records["Bright"][d]["redraw_curve"] == cal["calibration"]["Bright"][d]["redraw_curve"]
        )
        assert records["Bright"][d]["strength_95"] == old["Bright"][d]["strength_95"]
    assert records["Hidden"] == old["Hidden"]  # the judge cannot see it: left alone
    assert "redraw" not in old["Bright"]["add"]  # the input records are not modified


def test_redraw_weight_is_the_max_of_terms_scaled_by_redraw_and_coefficient():
    a, b = torch.zeros(4, 4), torch.zeros(4, 4)
    a[0, 0], b[0, 0], b[1, 1] = 1.0, 1.0, 0.5
    r = redraw_weight([(2.0, 0.25, a), (-0.5, 1.0, b)])
    assert r[0, 0] == 0.5 and r[1, 1] == 0.25 and r[2, 2] == 0.0
    assert redraw_weight([]) is None


def test_the_edit_pipeline_redraws_what_the_bank_chose(tmp_path):
    run = make_run(tmp_path / "run")
    bank = VectorBank.load(run)
    records = {"Smiling": {"add": {"redraw": 0.25}, "remove": {"redraw": 1.0}}}
    VectorBank({n: bank[n] for n in bank.names}, metadata={**bank.metadata,
               "calibration": records}, footprints=bank.footprints).save(run)  # fmt: skip
    pipe = EditPipeline.from_pretrained(run)
    w_s = footprint_weight(pipe.bank.footprints["Smiling"])
    w_m = footprint_weight(pipe.bank.footprints["Male"])
    assert torch.equal(pipe.redraw("Smiling", 1.0), 0.25 * w_s)
    assert pipe.redraw("Smiling", -1.0) is None  # removing redraws fully: the plain blend
    assert pipe.redraw("Male", 1.0) is None  # no record
    assert torch.equal(
        pipe.redraw("Smiling - 0.5*Male", 2.0), torch.maximum(0.25 * w_s, w_m)
    )  # Male (no record) redraws fully, at full weight (2 x 0.5)
    assert pipe.redraw("Eyeglasses") is None  # no footprint: not a local edit
    prepared = pipe.prepare(Image.fromarray(face_photo()))
    edited = np.asarray(pipe(prepared, "Smiling", 1.0, blend="local"))
    step = pipe.direction("Smiling", 1.0)
    weight = pipe.footprint("Smiling", 1.0)
    assert np.array_equal(edited, pipe.render(prepared, [step], "local", weight, 0.25 * w_s))
    assert not np.array_equal(edited, pipe.render(prepared, [step], "local", weight))
    # none at all: only the change shows; with the full redraw the reconstruction shows too
    zero = pipe.render(prepared, [step], "local", weight, torch.zeros_like(weight))
    full = pipe.render(prepared, [step], "local", weight)
    photo = prepared.pixels.astype(int)
    assert np.abs(zero - photo).sum() < np.abs(full - photo).sum()
    text = describe_calibration(
        VectorBank({"Smiling": bank["Smiling"]}, metadata={"calibration": records})
    )
    row = next(line for line in text.splitlines() if line.startswith("Smiling"))
    assert row.rstrip().endswith("0.25/1")


def test_sharp_squares_are_what_the_judge_sees(sharp):
    """The planted photos do what the tests above rely on: the sharp square is bright, the
    others are exactly the model's drawing."""
    vae, _, kw, *_ = sharp
    x = kw["faces"](np.arange(200))
    held_y = kw["held_labels"]
    assert (region_mean(x, BRIGHT_CORE)[held_y[:, 0] == 1] == 1.0).all()
    z = torch.from_numpy(kw["held_z"]).float()
    assert torch.equal(x[held_y[:, 0] == 0], vae.decode(z)[held_y[:, 0] == 0])


def test_with_redraws_adds_the_choice_to_a_saved_bank_and_changes_nothing_else(tmp_path):
    """A bank calibrated before redraws were chosen (the records without them), on a cache of
    faces the model draws exactly: both directions need no redraw; vectors, strengths and
    footprints stay."""
    from test_calibration import MarkerNet, _cache_images
    from test_evaluate import write_cache

    from conceptvae.evaluate import Judge
    from conceptvae.vectors import with_redraws

    vae = LinearVAE()
    cells = [(a, b) for a in (0, 1) for b in (0, 1) for _ in range(20)]
    z_train = np.array([[2 * a - 1, 2 * b - 1, 0, 0] for a, b in cells], np.float64)
    z_valid = np.zeros((40, 4))
    z_valid[:, 0] = np.concatenate([-np.linspace(0.04, 0.8, 20), np.linspace(0.04, 0.8, 20)])
    z = np.concatenate([z_train, z_valid])
    labels = (z[:, :2] > 0).astype(np.uint8)
    partition = np.repeat([0, 1], [80, 40])
    cache = write_cache(tmp_path / "cache", _cache_images(vae, z), labels, ["A", "C"], partition)
    judge = Judge(MarkerNet(), ["A", "C"], [0.5, 0.5], {"A": 1.0, "C": 1.0}, image_size=16)
    held = cache.split("valid")
    cal = calibrate(
        vae, judge, {"A": np.array([2.0, 0, 0, 0])}, faces=cache.batch, held_idx=held,
        held_z=z_valid, held_labels=labels[80:], names=["A", "C"], train_z=z_train,
        train_labels=labels[:80], progress=False,
    )  # fmt: skip
    assert cal["calibration"]["A"]["add"]["redraw"] == 0.0
    old = {"A": {k: v for k, v in cal["calibration"]["A"].items()}}
    for d in ("add", "remove"):
        old["A"][d] = {k: v for k, v in old["A"][d].items() if "redraw" not in k}
    bank = VectorBank(
        cal["vectors"], metadata={"calibration": old, "removal_scale": cal["removal_scale"]},
        footprints=cal["footprints"],
    )  # fmt: skip
    new = with_redraws(vae, bank, judge, cache, progress=False)
    rec = new.metadata["calibration"]["A"]
    for d in ("add", "remove"):
        assert rec[d]["redraw"] == 0.0 and rec[d]["redraw_curve"]["redraw"] == [1.0, 0.0]
        assert rec[d]["strength_95"] == old["A"][d]["strength_95"]
    np.testing.assert_array_equal(new["A"], bank["A"])
    np.testing.assert_array_equal(new.footprints["A"], bank.footprints["A"])
    assert new.removal_scale("A") == bank.removal_scale("A")
    assert "redraw" not in bank.metadata["calibration"]["A"]["add"]

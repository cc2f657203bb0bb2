import io
import json

import numpy as np
import pytest
from PIL import Image

from attributes import report
from attributes.bank import VectorBank
from attributes.errors import VectorError
from attributes.estimators import AttributeVectors
from attributes.report import Report, _heatmap_figure, quality_report

N, D = 3000, 16


def planted(seed: int = 0):
    """Gaussian latents; A thresholds the direction d, B copies A (10% flipped), C negates A
    (20% flipped), E is independent. Returns latents, labels, names, d, and a random direction
    orthogonal to d."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(N, D)).astype(np.float32)
    d = rng.normal(size=D)
    d /= np.linalg.norm(d)
    a = (z @ d + 0.1 * rng.normal(size=N) > 0.2).astype(np.uint8)
    b = np.where(rng.random(N) < 0.1, 1 - a, a)
    c = np.where(rng.random(N) < 0.2, a, 1 - a)
    e = rng.integers(0, 2, N)
    labels = np.stack([a, b, c, e], axis=1).astype(np.uint8)
    r = rng.normal(size=D)
    r -= (r @ d) * d
    return z, labels, ["A", "B", "C", "E"], d, r


def test_auc_of_planted_direction_is_high_and_random_is_chance():
    z, labels, names, d, r = planted()
    rep = quality_report(np.stack([d, r]), ["A", "E"], z, labels, names)
    assert rep.auc[0] > 0.95
    assert 0.4 < rep.auc[1] < 0.6  # r is random, and E is independent of everything
    rep = quality_report(np.stack([r]), ["A"], z, labels, names)
    assert 0.4 < rep.auc[0] < 0.6
    rep = quality_report(np.stack([-d]), ["a"], z, labels, names)  # names match any case
    assert rep.auc[0] < 0.05
    np.testing.assert_allclose(rep.norms, [1.0])


def test_cosine_matrix_is_symmetric_with_unit_diagonal():
    z, labels, names, d, r = planted()
    vectors = np.random.default_rng(3).normal(size=(4, D))
    vectors[1] = -2.5 * vectors[0]
    rep = quality_report(vectors, names, z, labels, names)
    assert rep.cosine.shape == (4, 4)
    np.testing.assert_allclose(rep.cosine, rep.cosine.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(rep.cosine), 1.0)
    assert rep.cosine[0, 1] == pytest.approx(-1.0)
    assert rep.most_similar("A") == ("B", pytest.approx(-1.0))


def test_confounds_find_planted_correlations_with_their_sign():
    z, labels, names, d, r = planted()
    rep = quality_report(np.stack([d]), ["A"], z, labels, names)
    (first, r1), (second, r2), _ = rep.confounds["A"]
    assert (first, second) == ("B", "C")
    assert r1 == pytest.approx(0.8, abs=0.05) and r2 == pytest.approx(-0.6, abs=0.05)
    # train_labels, when given, decide the confounds: here E copies A.
    train = labels.copy()
    train[:, 3] = train[:, 0]
    rep = quality_report(np.stack([d]), ["A"], z, labels, names, train_labels=train)
    assert rep.confounds["A"][0] == ("E", pytest.approx(1.0))


def test_empty_class_and_unlabelled_vector_get_nan_with_notes():
    z, labels, names, d, r = planted()
    labels[:, 1] = 1
    rep = quality_report(np.stack([d, d, r]), ["A", "B", "Mystery"], z, labels, names)
    assert rep.auc[0] > 0.95 and np.isnan(rep.auc[1]) and np.isnan(rep.auc[2])
    assert "no held-out negatives" in rep.notes["B"]
    assert "not among the labels" in rep.notes["Mystery"]
    assert rep.eval_counts["B"] == [0, N]
    out = rep.to_dict()
    assert out["auc"]["B"] is None and out["auc"]["A"] > 0.95
    json.dumps(out, allow_nan=False)


def test_to_text_lists_every_name():
    z, labels, names, d, r = planted()
    rep = quality_report(np.stack([d, r, -d]), ["A", "E", "C"], z, labels, names)
    text = rep.to_text()
    lines = text.splitlines()
    assert lines[0].startswith("attribute") and "AUC" in lines[0]
    for name in ("A", "E", "C"):
        assert any(line.startswith(name + " ") for line in lines)
    row_a = next(line for line in lines if line.startswith("A "))
    assert "C -1.00" in row_a and "B +0.8" in row_a  # most similar vector, top confound


def test_bank_input_uses_its_names_and_counts():
    z, labels, names, d, r = planted()
    bank = VectorBank({"A": d, "E": r}, metadata={"counts": {"A": [2000, 1000], "E": [1500, 1500]}})
    rep = quality_report(bank, None, z, labels, names)
    assert rep.names == ["A", "E"] and rep.counts == {"A": [2000, 1000], "E": [1500, 1500]}
    rep = quality_report(bank, ["e"], z, labels, names)
    assert rep.names == ["E"] and rep.counts == {"E": [1500, 1500]}


def test_report_rejects_mismatched_inputs():
    z, labels, names, d, r = planted()
    with pytest.raises(VectorError, match="latents has 16 columns but the vectors have 3"):
        quality_report(np.ones((1, 3)), ["A"], z, labels, names)
    with pytest.raises(VectorError, match="labels must be 0/1"):
        quality_report(np.stack([d]), ["A"], z, labels.astype(np.int8) * 2 - 1, names)


def _laid_out(fig):
    """Draw ``fig`` once (as saving does) so its axes sit where they are in the PNG."""
    fig.savefig(io.BytesIO(), format="png")
    return fig


def test_heatmap_draws_each_cosine_in_its_cell_in_its_colour(tmp_path):
    e = np.eye(D)
    z, labels, names, d, r = planted()
    vectors = np.stack([e[0], -e[0], e[1], np.zeros(D)])  # cosines +1, -1, 0, and undefined
    rep = quality_report(vectors, ["A", "B", "C", "E"], z, labels, names)
    path = rep.cosine_heatmap(tmp_path / "plots" / "cos.png", title="cosine")
    assert [p.name for p in path.parent.iterdir()] == ["cos.png"]  # no temporary left
    img = Image.open(path).convert("RGB")
    fig = _laid_out(_heatmap_figure(rep.cosine, rep.names, "cosine"))  # what was drawn
    width, height = fig.get_size_inches() * fig.dpi
    assert abs(img.size[0] - width) <= 1 and abs(img.size[1] - height) <= 1
    assert 200 < img.size[0] < 700 and 200 < img.size[1] < 700
    ax = fig.axes[0]
    drawn = ax.images[0].get_array()
    assert np.array_equal(drawn.mask, np.isnan(rep.cosine))
    np.testing.assert_allclose(drawn.filled(np.nan), rep.cosine)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B", "C", "E"]
    assert {"+1.00", "-1.00", "+0.00", "n/a"} <= {t.get_text() for t in ax.texts}
    assert ax.get_title() == "cosine"

    def cell(row, col):  # a pixel near the cell's corner, clear of the printed value
        x, y = ax.transData.transform((col - 0.35, row - 0.35))
        return img.getpixel((int(x), int(img.height - y)))

    red, green, blue = cell(0, 0)  # +1
    assert red > 80 and red > green + 60 and red > blue + 60
    red, green, blue = cell(0, 1)  # -1
    assert blue > 80 and blue > red + 60
    assert min(cell(0, 2)) > 230  # 0 is white
    assert cell(0, 3) == (200, 200, 200)  # undefined is grey


def test_heatmap_stays_readable_for_40_attributes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"Attribute_{i:02d}" for i in range(40)]
    z = rng.normal(size=(200, 8))
    labels = rng.integers(0, 2, (200, 40))
    rep = quality_report(rng.normal(size=(40, 8)), names, z, labels, names)
    img = Image.open(rep.cosine_heatmap(tmp_path / "cos.png")).convert("RGB")
    assert 40 * 14 < img.size[0] < 40 * 14 + 400 and 40 * 14 < img.size[1] < 40 * 14 + 400
    fig = _laid_out(_heatmap_figure(rep.cosine, names, None))
    ax = fig.axes[0]
    assert len(ax.texts) == 0 and len(ax.get_xticklabels()) == 40  # no values, every name
    x0, y0 = ax.transData.transform((-0.5, -0.5))
    x1, y1 = ax.transData.transform((39.5, 39.5))
    assert abs(x1 - x0) >= 40 * 12  # cells stay at least 12 px wide
    colours = np.asarray(img).reshape(-1, 3)
    assert len(np.unique(colours, axis=0)) > 100  # a drawn map, not a blank page
    with pytest.raises(VectorError, match=r"ending in \.png"):
        rep.cosine_heatmap(tmp_path / "cos.jpg")


# -- problems ----------------------------------------------------------------------------------


def lipstick(seed: int = 0, per_sex: int = 1500, d: int = 64):
    """CelebA-like labels: Wearing_Lipstick is almost collinear with Male (5 of 1500 men wear
    it, 1200 of 1500 women), and the latents encode only Male and Smiling: lipstick shows in
    them only through sex. Returns train and held-out latents and labels, names, directions."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 2)))
    male_dir, smile_dir = q.T

    def half():
        male = np.repeat([1, 0], per_sex)
        lip = np.zeros(2 * per_sex, np.uint8)
        lip[:5] = 1
        lip[per_sex : per_sex + int(0.8 * per_sex)] = 1
        smile = rng.random(2 * per_sex) < np.where(male == 1, 0.35, 0.65)
        y = np.stack([male, lip, smile], axis=1).astype(np.uint8)
        z = rng.standard_normal((2 * per_sex, d)) + 2.0 * y[:, [0, 2]] @ q.T
        return z.astype(np.float32), y

    (zt, yt), (zv, yv) = half(), half()
    return zt, yt, zv, yv, ["Male", "Wearing_Lipstick", "Smiling"], male_dir, smile_dir


def test_balanced_label_collinear_with_its_confounder_is_flagged():
    zt, yt, zv, yv, names, _, _ = lipstick()
    assert np.corrcoef(yt[:, 0], yt[:, 1])[0, 1] < -0.8
    est = AttributeVectors("balanced", attributes=["Wearing_Lipstick", "Smiling"]).fit(
        zt, yt, names
    )
    assert est.confounders_["Wearing_Lipstick"][0] == "Male"
    rep = quality_report(est, None, zv, yv, names, train_labels=yt)
    # 1205 lipstick wearers, but the 5 men carry half the weight: effectively under 20 faces
    eff = rep.effective_counts["Wearing_Lipstick"]
    assert eff[1] < 20 and est.counts_[0, 1] > 1000
    assert rep.flagged == ["Wearing_Lipstick"]
    reasons = rep.problems["Wearing_Lipstick"]
    assert any(f"rests on {eff[1]:.0f} positive faces" in r and "label more" in r for r in reasons)
    assert any("near chance" in r for r in reasons)  # and indeed it does nothing
    assert 0.4 < rep.auc[0] < report.MIN_AUC
    assert "Smiling" not in rep.problems  # balanced on Male, it rests on plenty of faces
    text = rep.to_text()
    assert "problems: 1 of 2 vectors flagged" in text
    assert "  Wearing_Lipstick: rests on" in text
    out = rep.to_dict()
    assert out["problems"] == {"Wearing_Lipstick": reasons}
    assert out["effective_counts"]["Wearing_Lipstick"][1] == pytest.approx(eff[1])
    json.dumps(out, allow_nan=False)


def test_clean_vectors_are_not_flagged():
    zt, yt, zv, yv, names, _, _ = lipstick()
    est = AttributeVectors("mean").fit(zt, yt, names)  # lipstick follows sex, so the mean works
    rep = quality_report(est, None, zv, yv, names, train_labels=yt)
    assert rep.problems == {} and rep.flagged == []
    assert (rep.auc > 0.8).all()
    assert rep.effective_counts == {
        n: [float(c) for c in row] for n, row in zip(names, est.counts_)
    }
    assert "problems: 0 of 3 vectors flagged" in rep.to_text()
    assert rep.to_dict()["problems"] == {}


def test_each_problem_is_flagged_with_what_to_do():
    z, labels, names, d, r = planted()
    e = np.eye(D)
    vectors = np.stack([d, -d, 0.01 * d, np.zeros(D), e[0], 2 * d])
    rep = quality_report(
        vectors,
        ["A", "B", "C", "E", "Lonely", "Wide"],
        z,
        labels,
        names,
        effective_counts={"wide": [500, 12.4]},  # any case
        coverage={"Lonely": 0.3, "Wide": 0.9},
    )
    p = rep.problems
    assert "A" not in p
    assert p["B"] == [
        "held-out AUC 0.10: the vector points away from its label; check that the label is 0/1 "
        "in the right sense and the vector its own"
    ]
    # C is -A (80%): 0.01*d points away from it too, and is tiny next to the median norm 1
    assert any("norm 0.01 is under 0.1 x the median norm 1" in x for x in p["C"])
    assert any("zero vector" in x for x in p["E"])
    assert any("near chance" in x for x in p["E"])  # a zero vector gives every face one score
    assert p["Lonely"] == [
        "balanced on 30% of the faces (< 50%; the rest are in confounder cells lacking a "
        "class): balance on fewer confounders, or use method='conditional'"
    ]
    assert p["Wide"] == [
        "rests on 12 positive faces (effective sample size < 30): label more, or use "
        "method='mean' or 'conditional'"
    ]
    assert rep.flagged == ["B", "C", "E", "Lonely", "Wide"]
    with pytest.raises(VectorError, match="unknown attribute 'Wid' in effective_counts"):
        quality_report(vectors, list("ABCEFG"), z, labels, names, effective_counts={"Wid": [1, 1]})


def test_thresholds_are_constants_shown_in_text_and_dict(monkeypatch):
    z, labels, names, d, r = planted()
    rep = quality_report(np.stack([d]), ["A"], z, labels, names)
    assert rep.to_dict()["thresholds"] == {
        "min_auc": report.MIN_AUC,
        "min_effective": report.MIN_EFFECTIVE,
        "min_coverage": report.MIN_COVERAGE,
        "min_norm_ratio": report.MIN_NORM_RATIO,
    }
    assert (report.MIN_AUC, report.MIN_EFFECTIVE) == (0.6, 30)
    assert "AUC < 0.6, a class effectively under 30 faces" in rep.to_text()
    monkeypatch.setattr(report, "MIN_AUC", 0.999)  # the constants decide
    rep = quality_report(np.stack([d]), ["A"], z, labels, names)
    assert rep.flagged == ["A"] and "AUC < 0.999" in rep.to_text()


def test_bank_metadata_gives_class_sizes_and_coverage():
    z, labels, names, d, r = planted()
    meta = {
        "counts": {"A": [2000, 20], "E": [1500, 1500]},
        "effective_counts": {"E": [1400.0, 25.0]},
        "coverage": {"E": 0.45},
    }
    rep = quality_report(VectorBank({"A": d, "E": 2 * d}, metadata=meta), None, z, labels, names)
    assert rep.effective_counts == {"E": [1400.0, 25.0]}
    assert rep.coverage == {"E": 0.45}
    assert rep.problems["A"] == ["rests on 20 positive faces (effective sample size < 30): "
                                 "label more positive examples"]  # fmt: skip
    assert [x.split(" ")[0] for x in rep.problems["E"]] == ["held-out", "rests", "balanced"]


def test_report_built_directly_flags_auc_and_norm():
    rep = Report(
        names=["X", "Y", "Z"],
        auc=np.array([0.9, 0.55, np.nan]),
        norms=np.array([1.0, 1.2, 0.05]),
        cosine=np.eye(3),
        confounds={},
    )
    assert rep.flagged == ["Y", "Z"]
    assert "near chance" in rep.problems["Y"][0] and "norm 0.05" in rep.problems["Z"][0]


def test_report_of_unfitted_estimator_raises():
    z, labels, names, d, r = planted()
    with pytest.raises(VectorError, match="not fitted yet; call fit"):
        quality_report(AttributeVectors(), None, z, labels, names)
    est = AttributeVectors().fit(z, labels, names)
    rep = quality_report(est, ["c", "A"], z, labels, names)
    assert rep.names == ["C", "A"] and rep.counts["A"] == est.counts_[0].tolist()


def test_merged_bank_gives_class_sizes_per_vector():
    z, labels, names, d, r = planted()
    meta = {"vectors": {"A": {"effective_counts": [900.0, 8.0], "coverage": 0.2}, "E": {}}}
    rep = quality_report(VectorBank({"A": d, "E": r}, metadata=meta), None, z, labels, names)
    assert rep.effective_counts == {"A": [900.0, 8.0]} and rep.coverage == {"A": 0.2}
    assert [x.split(" ")[0] for x in rep.problems["A"]] == ["rests", "balanced"]

import json

import numpy as np
import pytest
from PIL import Image

from attributes.bank import VectorBank
from attributes.errors import VectorError
from attributes.report import _heatmap_layout, quality_report

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


def test_heatmap_colours_and_size(tmp_path):
    e = np.eye(D)
    z, labels, names, d, r = planted()
    rep = quality_report(np.stack([e[0], -e[0], e[1]]), ["A", "B", "C"], z, labels, names)
    path = rep.cosine_heatmap(tmp_path / "plots" / "cos.png", title="cosine")
    assert [p.name for p in path.parent.iterdir()] == ["cos.png"]  # no temporary left
    img = Image.open(path).convert("RGB")
    lay = _heatmap_layout(rep.names, "cosine")
    assert img.size == (lay["width"], lay["height"])
    assert 3 * lay["cell"] < img.size[0] < 3 * lay["cell"] + 300

    def cell(row, col):  # a pixel near the cell's corner, clear of the printed value
        return img.getpixel((lay["x0"] + col * lay["cell"] + 3, lay["y0"] + row * lay["cell"] + 3))

    red, green, blue = cell(0, 0)  # +1
    assert red > 150 and red > green + 100 and red > blue + 100
    red, green, blue = cell(0, 1)  # -1
    assert blue > 150 and blue > red + 100
    assert min(cell(0, 2)) > 240  # 0 is white


def test_heatmap_stays_readable_for_40_attributes(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"Attribute_{i:02d}" for i in range(40)]
    z = rng.normal(size=(200, 8))
    labels = rng.integers(0, 2, (200, 40))
    rep = quality_report(rng.normal(size=(40, 8)), names, z, labels, names)
    img = Image.open(rep.cosine_heatmap(tmp_path / "cos.png"))
    lay = _heatmap_layout(names, None)
    assert lay["cell"] == 14
    assert 40 * 14 < img.size[0] < 40 * 14 + 300 and 40 * 14 < img.size[1] < 40 * 14 + 300
    with pytest.raises(VectorError, match=r"ending in \.png"):
        rep.cosine_heatmap(tmp_path / "cos.jpg")

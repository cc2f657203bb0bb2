import numpy as np
import pytest

from attributes._arrays import as_array
from attributes.errors import UnreliableVectorWarning, VectorError
from attributes.estimators import AttributeVectors, mean_difference, project_out


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _planted(n=20000, d=64, seed=0):
    """Latents with directions for A and B, whose labels agree 90% of the time (r = 0.8)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    dir_a, dir_b, dir_c = q.T
    a = rng.random(n) < 0.5
    b = a ^ (rng.random(n) < 0.1)
    c = rng.random(n) < 0.5
    labels = np.stack([a, b, c], axis=1).astype(np.uint8)
    z = rng.standard_normal((n, d)) + 1.5 * labels @ np.stack([dir_a, dir_b, dir_c])
    return z.astype(np.float32), labels, ["A", "B", "C"], dir_a, dir_b


def _small(n=200, d=8, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, d)).astype(np.float32)
    labels = (rng.random((n, 2)) < 0.5).astype(np.uint8)
    return z, labels, ["Smiling", "Male"]


def test_planted_labels_are_correlated():
    _, labels, _, _, _ = _planted()
    assert abs(np.corrcoef(labels[:, 0], labels[:, 1])[0, 1] - 0.8) < 0.03
    assert abs(np.corrcoef(labels[:, 0], labels[:, 2])[0, 1]) < 0.03


def test_mean_vector_is_contaminated_by_correlated_attribute():
    z, labels, names, dir_a, dir_b = _planted()
    v = AttributeVectors("mean").fit(z, labels, names).vector("A")
    assert _cos(v, dir_b) > 0.4
    assert _cos(v, dir_a) < 0.9


def test_balanced_vector_recovers_planted_direction():
    z, labels, names, dir_a, _ = _planted()
    est = AttributeVectors("balanced").fit(z, labels, names)
    assert _cos(est.vector("A"), dir_a) > 0.95
    assert est.confounders_["A"] == ["B"]  # C is uncorrelated (|r| < 0.05), so not balanced
    assert 0.99 < est.coverage_["A"] <= 1.0


def test_conditional_vector_recovers_planted_direction():
    z, labels, names, dir_a, dir_b = _planted()
    est = AttributeVectors("conditional", condition=["B"]).fit(z, labels, names)
    v = est.vector("A")
    assert _cos(v, dir_a) > 0.95
    assert est.names_ == ["A", "C"]  # the condition is not returned unless asked for
    assert "A" in est.condition_confounders_["A"]["B"]  # B's direction was balanced on A


def test_conditional_vector_is_orthogonal_to_condition_directions():
    z, labels, names, _, _ = _planted()
    est = AttributeVectors("conditional", condition=["B", "C"], attributes=["A"])
    v = est.fit(z, labels, names).vector("A").astype(np.float64)
    cond = AttributeVectors("balanced", confounders=["A"], attributes=["B", "C"])
    others = cond.fit(z, labels, names).vectors_.astype(np.float64)
    assert np.abs(others @ v).max() < 1e-4 * np.linalg.norm(v) * np.linalg.norm(others)


def test_conditional_keeps_base_vector_of_requested_condition():
    z, labels, names, _, _ = _planted()
    est = AttributeVectors("conditional", condition=["B"], attributes=["A", "B"])
    est.fit(z, labels, names)
    base = AttributeVectors("mean", attributes=["B"]).fit(z, labels, names)
    np.testing.assert_array_equal(est.vector("B"), base.vector("B"))


def test_conditional_only_on_itself_raises():
    z, labels, names, _, _ = _planted(n=200)
    est = AttributeVectors("conditional", condition=["B"], attributes=["B"])
    with pytest.raises(VectorError, match="every requested attribute is a condition"):
        est.fit(z, labels, names)


def test_classifier_finds_separating_direction_and_scale():
    rng = np.random.default_rng(1)
    d = 16
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    z = rng.standard_normal((3000, d))
    z = z[np.abs(z @ direction) > 0.5]  # a margin: the classes are separable
    labels = (z @ direction > 0).astype(np.uint8)
    est = AttributeVectors("classifier", Cs=(0.01, 0.1, 1.0)).fit(z, labels, ["X"])
    v = est.vector("X").astype(np.float64)
    assert _cos(v, direction) > 0.95
    n = v / np.linalg.norm(v)
    gap = z[labels == 1].mean(axis=0) - z[labels == 0].mean(axis=0)
    assert np.dot(v, n) == pytest.approx(np.dot(gap, n), rel=1e-5)


def test_classifier_subsamples_rows():
    z, labels, names, dir_a, _ = _planted(n=4000, d=16)
    est = AttributeVectors("classifier", attributes=["C"], Cs=(0.1,), max_samples=500)
    v = est.fit(z, labels, names).vector("C")
    assert est.counts_.sum() == 4000  # the scale uses every row, the normal only a subsample
    assert np.isfinite(v).all() and v.shape == (16,)


def test_mean_equals_loop_over_attributes():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((500, 12)).astype(np.float32) * 3 + 7
    labels = (rng.random((500, 4)) < [0.1, 0.3, 0.5, 0.9]).astype(np.uint8)
    est = AttributeVectors("mean").fit(z, labels, list("abcd"))
    expected = np.stack(
        [
            z[labels[:, j] == 1].astype(np.float64).mean(axis=0)
            - z[labels[:, j] == 0].astype(np.float64).mean(axis=0)
            for j in range(4)
        ]
    )
    assert np.abs(est.vectors_ - expected).max() < 1e-6
    np.testing.assert_array_equal(est.counts_[:, 1], labels.sum(axis=0))
    np.testing.assert_array_equal(est.counts_.sum(axis=1), 500)
    np.testing.assert_allclose(est.norms_, np.linalg.norm(expected, axis=1), rtol=1e-6)
    assert est.vectors_.dtype == np.float32 and est.norms_.dtype == np.float32
    vectors, counts = mean_difference(z, labels)
    assert np.abs(vectors - expected).max() < 1e-10
    assert counts.dtype == np.int64 and counts.shape == (4, 2)


def test_balanced_without_confounders_equals_mean():
    z, labels, names = _small()
    mean = AttributeVectors("mean").fit(z, labels, names)
    balanced = AttributeVectors("balanced", confounders=0).fit(z, labels, names)
    np.testing.assert_allclose(balanced.vectors_, mean.vectors_, atol=1e-6)
    assert balanced.coverage_ == {"Smiling": 1.0, "Male": 1.0}


def test_balanced_drops_cells_without_both_classes():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((400, 4))
    b = rng.random(400) < 0.5
    a = b & (rng.random(400) < 0.5)  # where B is 0, A is always 0: that cell is dropped
    labels = np.stack([a, b], axis=1)
    est = AttributeVectors("balanced", confounders=["B"], min_count=1).fit(z, labels, ["A", "B"])
    assert est.coverage_["A"] == pytest.approx(b.mean())
    np.testing.assert_array_equal(est.counts_[0], [(b & ~a).sum(), a.sum()])
    expected = z[a].mean(axis=0) - z[b & ~a].mean(axis=0)
    np.testing.assert_allclose(est.vector("A"), expected, atol=1e-5)


def test_torch_input_equals_numpy_input():
    torch = pytest.importorskip("torch")
    z, labels, names, _, _ = _planted(n=2000, d=16)
    for method in ("mean", "balanced"):
        from_numpy = AttributeVectors(method).fit(z, labels, names)
        from_torch = AttributeVectors(method).fit(
            torch.from_numpy(z), torch.from_numpy(labels).bool(), names
        )
        np.testing.assert_array_equal(from_torch.vectors_, from_numpy.vectors_)
    assert isinstance(as_array(torch.zeros(3, 2), "x", 2), np.ndarray)
    half = torch.ones(3, 2, dtype=torch.bfloat16, requires_grad=True)
    np.testing.assert_array_equal(as_array(half, "x", 2), np.ones((3, 2), dtype=np.float32))


def test_one_dimensional_labels_with_one_name():
    z, labels, _ = _small()
    one = AttributeVectors().fit(z, labels[:, 0], ["Smiling"])
    two = AttributeVectors().fit(z, labels, ["Smiling", "Male"])
    np.testing.assert_array_equal(one.vector("Smiling"), two.vector("Smiling"))


def test_vector_lookup_is_case_insensitive_and_suggests():
    z, labels, names = _small()
    est = AttributeVectors().fit(z, labels, names)
    np.testing.assert_array_equal(est.vector("smiling"), est.vectors_[0])
    with pytest.raises(VectorError, match="did you mean 'Smiling'"):
        est.vector("Smilng")


def test_attributes_selects_and_orders_case_insensitively():
    z, labels, names = _small()
    est = AttributeVectors(attributes=["male", "Smiling"]).fit(z, labels, names)
    assert est.names_ == ["Male", "Smiling"]
    assert est.vectors_.shape == (2, 8)


def test_project_out_is_orthogonal_to_every_other():
    rng = np.random.default_rng(4)
    v = rng.standard_normal(32)
    others = rng.standard_normal((5, 32))
    r = project_out(v, others)
    assert np.abs(others @ r).max() < 1e-6
    assert r.shape == (32,)


def test_project_out_leaves_orthogonal_vector_unchanged():
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.standard_normal((16, 4)))
    v, others = q[:, 0] * 3.0, q[:, 1:].T
    np.testing.assert_allclose(project_out(v, others), v, atol=1e-12)


def test_project_out_handles_collinear_others():
    rng = np.random.default_rng(6)
    v = rng.standard_normal(16)
    u = rng.standard_normal(16)
    r = project_out(v, np.stack([u, 2.0 * u, -u]))
    np.testing.assert_allclose(r, v - u * (v @ u) / (u @ u), atol=1e-10)
    np.testing.assert_allclose(project_out(v, u), r, atol=1e-10)


def test_not_fitted_raises():
    with pytest.raises(VectorError, match="not fitted"):
        AttributeVectors().vector("Smiling")


@pytest.mark.parametrize(
    "latents, labels, names, message",
    [
        (np.zeros(10), np.zeros((10, 1)), ["a"], r"latents must be 2-D, got shape \(10,\)"),
        (np.zeros((10, 3)), np.zeros((10, 1, 1)), ["a"], r"labels must be 2-D"),
        (np.zeros((10, 3)), np.zeros((9, 1)), ["a"], r"labels has 9 rows but latents has 10"),
        (np.zeros((10, 3)), np.zeros((10, 2)), ["a"], r"2 columns but names has 1 entries"),
        (np.zeros((10, 3)), np.zeros(10), ["a", "b"], r"1-D but names has 2 entries"),
        (np.zeros((10, 3)), np.zeros((10, 2)), ["a", "A"], r"duplicate: 'a' at 0 and 'A' at 1"),
    ],
)
def test_bad_shapes_raise(latents, labels, names, message):
    with pytest.raises(VectorError, match=message):
        AttributeVectors().fit(latents, labels, names)


def test_non_finite_latents_raise_with_rows():
    z, labels, names = _small()
    z[7, 2] = np.nan
    z[50, 0] = np.inf
    with pytest.raises(VectorError, match=r"in 2 of 200 rows \(first bad row: 7\)"):
        AttributeVectors().fit(z, labels, names)


def test_labels_other_than_zero_one_raise():
    z, labels, names = _small()
    with pytest.raises(VectorError, match=r"found values \{-1, 1\}.*labels > 0"):
        AttributeVectors().fit(z, labels.astype(np.int8) * 2 - 1, names)
    halves = labels.astype(np.float64)
    halves[0, 0] = 0.5
    with pytest.raises(VectorError, match=r"found values \{0, 0.5, 1\} in 1 entries"):
        AttributeVectors().fit(z, halves, names)


def test_labels_accept_bool_and_float():
    z, labels, names = _small()
    expected = AttributeVectors().fit(z, labels, names).vectors_
    np.testing.assert_array_equal(AttributeVectors().fit(z, labels == 1, names).vectors_, expected)
    np.testing.assert_array_equal(AttributeVectors().fit(z, labels * 1.0, names).vectors_, expected)


def test_label_without_positives_raises():
    z, labels, names = _small()
    labels[:, 1] = 0
    with pytest.raises(VectorError, match=r"'Male' has 0 positives and 200 negatives.*attributes="):
        AttributeVectors().fit(z, labels, names)
    # dropping it via attributes= works
    AttributeVectors(attributes=["Smiling"]).fit(z, labels, names)


def test_few_examples_warn():
    z, labels, names = _small()
    labels[:, 0] = 0
    labels[:3, 0] = 1
    with pytest.warns(
        UnreliableVectorWarning, match=r"'Smiling' has 3 positives and 197 neg.*unre"
    ):
        AttributeVectors(min_count=10).fit(z, labels, names)


@pytest.mark.parametrize(
    "params, message",
    [
        (dict(attributes=["Smilng"]), r"unknown attribute 'Smilng' in attributes; did you mean"),
        (
            dict(method="conditional", condition=["Mael"]),
            r"unknown attribute 'Mael' in condition; did you mean 'Male'",
        ),
        (
            dict(method="balanced", confounders=["Hat"]),
            r"unknown attribute 'Hat' in confounders; known names \(2\): Smiling, Male",
        ),
        (dict(method="meen"), r"unknown method 'meen'; did you mean 'mean'"),
        (dict(method="conditional", base="x"), r"unknown base 'x'"),
        (dict(method="conditional"), r"needs condition="),
        (dict(condition=["Male"]), r"condition is only used by method='conditional'"),
        (dict(method="balanced", confounders=-1), r"confounders must be None, an integer >= 0"),
        (dict(min_count=0), r"min_count must be an integer >= 1"),
        (dict(attributes=["Male", "male"]), r"lists 'Male' 2 times \(as 'Male', 'male'\)"),
    ],
)
def test_bad_parameters_raise(params, message):
    z, labels, names = _small()
    with pytest.raises(VectorError, match=message):
        AttributeVectors(**params).fit(z, labels, names)


def test_case_insensitive_names_accepted_in_parameters():
    z, labels, names = _small()
    est = AttributeVectors("conditional", condition=["male"], attributes=["SMILING"])
    assert est.fit(z, labels, names).names_ == ["Smiling"]


def test_project_out_shape_mismatch_raises():
    with pytest.raises(VectorError, match="others has 3 columns but vector has 4 entries"):
        project_out(np.ones(4), np.ones((2, 3)))

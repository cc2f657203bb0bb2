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


@pytest.mark.parametrize("direction", ["pattern", "normal"])
def test_classifier_finds_separating_direction_of_isotropic_latents(direction):
    rng = np.random.default_rng(1)
    d = 16
    truth = rng.standard_normal(d)
    truth /= np.linalg.norm(truth)
    z = rng.standard_normal((3000, d))
    z = z[np.abs(z @ truth) > 0.5]  # a margin: the classes are separable
    labels = (z @ truth > 0).astype(np.uint8)
    est = AttributeVectors("classifier", Cs=(0.01, 0.1, 1.0), direction=direction)
    v = est.fit(z, labels, ["X"]).vector("X").astype(np.float64)
    assert _cos(v, truth) > 0.95  # isotropic latents: pattern and normal agree


def _anisotropic(n=20000, seed=1):
    """Latents z = 3 + y * a + noise, noise Gaussian with standard deviations from 0.05 to 60 and
    correlations up to 0.84, the same in both classes. Then the generative direction (where the
    attribute shows) is ``a``, and the discriminative one (the Bayes logistic normal) is
    ``w = Cov(noise)^-1 a``, nearly orthogonal to it. Returns z, y, a, w."""
    rng = np.random.default_rng(seed)
    scales = np.array([0.05, 0.3, 1.0, 4.0, 15.0, 60.0])
    b = rng.standard_normal((6, 6))
    corr = b @ b.T + 0.3 * np.eye(6)
    corr /= np.sqrt(np.outer(np.diag(corr), np.diag(corr)))
    cov = corr * np.outer(scales, scales)
    a = scales * rng.standard_normal(6)
    a *= 2.5 / np.sqrt(a @ np.linalg.solve(cov, a))  # Mahalanobis distance 2.5: overlapping
    y = (rng.random(n) < 0.5).astype(np.uint8)
    z = 3.0 + y[:, None] * a + rng.multivariate_normal(np.zeros(6), cov, size=n)
    return z.astype(np.float32), y, a, np.linalg.solve(cov, a)


def test_anisotropic_planted_data_tell_pattern_and_normal_apart():
    z, _, a, w = _anisotropic()
    s = z.std(axis=0)
    assert s.max() / s.min() > 500
    assert abs(_cos(a, w)) < 0.1
    # the results a missing back-transform would give are far from the truths
    assert _cos(w * s, w) < 0.7 and _cos(a / s, a) < 0.75
    cov = np.cov(z.astype(np.float64), rowvar=False)
    assert _cos(cov @ (w * s), a) < 0.95  # the pattern of a normal left in standardised units


def test_classifier_normal_is_the_discriminative_direction_in_raw_units():
    z, y, a, w = _anisotropic()
    est = AttributeVectors("classifier", direction="normal").fit(z, y, ["X"])
    v = est.vector("X").astype(np.float64)
    assert _cos(v, w) > 0.999
    assert abs(_cos(v, a)) < 0.1  # the normal is not where the attribute shows
    # Without dividing by the standard deviations, the fit would have returned v * s.
    assert _cos(v * z.std(axis=0), w) < 0.7


def test_classifier_pattern_is_the_generative_direction_in_raw_units():
    z, y, a, w = _anisotropic()
    v = AttributeVectors("classifier").fit(z, y, ["X"]).vector("X").astype(np.float64)
    assert _cos(v, a) > 0.99
    assert abs(_cos(v, w)) < 0.1
    # Cov computed on standardised latents, not mapped back, gives pattern / s.
    assert _cos(v / z.std(axis=0), a) < 0.75
    # and it is exactly Cov(z) times the normal of the same fit
    normal = AttributeVectors("classifier", direction="normal").fit(z, y, ["X"]).vector("X")
    cov = np.cov(z.astype(np.float64), rowvar=False)
    assert _cos(v, cov @ normal.astype(np.float64)) > 1 - 1e-9
    # which is not Cov(z) times a normal left in standardised units
    assert _cos(v, cov @ (normal * z.std(axis=0))) < 0.95


@pytest.mark.parametrize("direction", ["pattern", "normal"])
def test_classifier_scale_moves_negative_mean_to_positive_mean(direction):
    z, y, _, _ = _anisotropic(n=5000, seed=2)
    v = AttributeVectors("classifier", direction=direction).fit(z, y, ["X"]).vector("X")
    v = v.astype(np.float64)
    unit = v / np.linalg.norm(v)
    z64 = z.astype(np.float64)
    pos, neg = z64[y == 1].mean(axis=0), z64[y == 0].mean(axis=0)
    assert (neg + v) @ unit == pytest.approx(pos @ unit, rel=1e-6, abs=1e-6 * np.abs(pos).max())
    assert np.linalg.norm(v) == pytest.approx((pos - neg) @ unit, rel=1e-6)
    assert (pos - neg) @ unit > 0  # points from the negatives to the positives
    # the scale is not trivially 1 or the mean difference's length
    assert abs(np.linalg.norm(v) - 1.0) > 0.05
    assert np.linalg.norm(v) < 0.99 * np.linalg.norm(pos - neg) or direction == "pattern"


def test_classifier_subsamples_rows():
    z, labels, names, dir_a, _ = _planted(n=4000, d=16)
    est = AttributeVectors("classifier", attributes=["C"], Cs=(0.1,), max_samples=500)
    v = est.fit(z, labels, names).vector("C")
    assert est.counts_.sum() == 4000  # the scale uses every row, the normal only a subsample
    assert est.effective_counts_.sum() == 500  # what the classifier rests on
    assert (est.effective_counts_ <= est.counts_).all()
    assert np.isfinite(v).all() and v.shape == (16,)


def test_mean_effective_counts_are_the_class_counts():
    z, labels, names, _, _ = _planted(n=2000, d=8)
    est = AttributeVectors("mean").fit(z, labels, names)
    assert est.effective_counts_.shape == (3, 2) and est.effective_counts_.dtype == np.float64
    np.testing.assert_array_equal(est.effective_counts_, est.counts_)
    balanced = AttributeVectors("balanced", confounders=0).fit(z, labels, names)
    np.testing.assert_allclose(balanced.effective_counts_, est.counts_, rtol=1e-12)


def _collinear(per_sex=1500, lip_men=5):
    """Exact counts: of 1500 men 5 wear lipstick, of 1500 women 1200 do (r = -0.8)."""
    male = np.repeat([1, 0], per_sex)
    lip = np.zeros(2 * per_sex, np.uint8)
    lip[:lip_men] = 1
    lip[per_sex : per_sex + int(0.8 * per_sex)] = 1
    return np.stack([male, lip], axis=1).astype(np.uint8)


def test_balanced_effective_counts_are_kish_sizes_under_the_weights():
    labels = _collinear()
    z = np.random.default_rng(7).standard_normal((labels.shape[0], 4))
    est = AttributeVectors("balanced", confounders=["Male"], attributes=["Lipstick"])
    est.fit(z, labels, ["Male", "Lipstick"])
    # Both cells hold half the faces; each class's faces in a cell share half the weight.
    # Kish: 1 / sum over cells of share^2 / count.
    positives = 1.0 / (0.25 / 5 + 0.25 / 1200)
    negatives = 1.0 / (0.25 / 1495 + 0.25 / 300)
    np.testing.assert_allclose(est.effective_counts_, [[negatives, positives]], rtol=1e-12)
    assert est.effective_counts_[0, 1] < 20  # 1205 lipstick wearers, effectively 20
    np.testing.assert_array_equal(est.counts_, [[1795, 1205]])


def _two_confounds(n=30000, d=32, seed=0):
    """T has its own direction and is more likely with M and with Y (independent of each
    other), which have their own directions; all three orthogonal."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, 3)))
    m = rng.random(n) < 0.5
    yg = rng.random(n) < 0.5
    t = rng.random(n) < 0.1 + 0.4 * m + 0.4 * yg
    labels = np.stack([t, m, yg], axis=1).astype(np.uint8)
    z = rng.standard_normal((n, d)) + 1.5 * labels @ q.T
    return z.astype(np.float32), labels, ["T", "Male", "Young"], q.T


def test_conditional_on_two_conditions_removes_both_and_keeps_the_target():
    z, labels, names, (t_dir, m_dir, y_dir) = _two_confounds()
    mean = AttributeVectors("mean", attributes=["T"]).fit(z, labels, names).vector("T")
    assert _cos(mean, m_dir) > 0.3 and _cos(mean, y_dir) > 0.3  # the mean drags both along
    est = AttributeVectors("conditional", condition=["Male", "Young"])
    v = est.fit(z, labels, names).vector("T")
    assert est.names_ == ["T"] and est.condition_ == ["Male", "Young"]
    assert abs(_cos(v, m_dir)) < 0.03 and abs(_cos(v, y_dir)) < 0.03
    assert _cos(v, t_dir) > 0.99
    # with one condition, the other's direction stays
    only_male = AttributeVectors("conditional", condition="Male").fit(z, labels, names)
    assert _cos(only_male.vector("T"), y_dir) > 0.3


def test_condition_as_one_name_or_a_list():
    z, labels, names, _, _ = _planted(n=2000, d=8)
    one = AttributeVectors("conditional", condition="b").fit(z, labels, names)
    listed = AttributeVectors("conditional", condition=["B"]).fit(z, labels, names)
    assert one.condition_ == listed.condition_ == ["B"]
    assert one.names_ == listed.names_ == ["A", "C"]
    np.testing.assert_array_equal(one.vectors_, listed.vectors_)
    two = AttributeVectors("conditional", condition=["B", "C"]).fit(z, labels, names)
    assert two.names_ == ["A"] and two.condition_ == ["B", "C"]
    assert not np.allclose(two.vector("A"), one.vector("A"))


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
        (dict(direction="normal"), r"direction='normal' is only used by the classifier"),
        (
            dict(method="classifier", direction="normals"),
            r"unknown direction 'normals'; did you mean 'normal'",
        ),
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


def _many_confounds(n=40000, d=48, k=6, seed=3):
    """T has its own direction and is more likely with each of k independent labels C0..C5,
    which have their own directions: more confounders than balancing's default of 3."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((d, k + 1)))
    others = rng.random((n, k)) < 0.5
    t = rng.random(n) < 0.05 + 0.15 * others.sum(1)
    labels = np.column_stack([t, others]).astype(np.uint8)
    scale = np.r_[1.5, np.full(k, 3.0)]  # the confounders draw strongly
    z = rng.standard_normal((n, d)) + (labels * scale) @ q.T
    return z.astype(np.float32), labels, ["T", *(f"C{i}" for i in range(k))], q.T


def test_adjusted_holds_every_other_label_fixed():
    z, labels, names, dirs = _many_confounds()
    adjusted = AttributeVectors("adjusted", attributes=["T"]).fit(z, labels, names)
    balanced = AttributeVectors("balanced", attributes=["T"]).fit(z, labels, names)
    mean = AttributeVectors("mean", attributes=["T"]).fit(z, labels, names)
    # the planted effect of T, with the six labels that come with it held fixed
    np.testing.assert_allclose(adjusted.vector("T"), 1.5 * dirs[0], atol=0.06)
    assert _cos(adjusted.vector("T"), dirs[0]) > 0.995
    # balancing three of the six leaves the other three in; the mean difference keeps all
    assert _cos(balanced.vector("T"), dirs[0]) < 0.92
    assert _cos(mean.vector("T"), dirs[0]) < _cos(balanced.vector("T"), dirs[0])
    for c in dirs[1:]:
        assert abs(_cos(adjusted.vector("T"), c)) < 0.03


def test_adjusted_effective_counts_shrink_with_collinearity():
    labels = _collinear()
    z = np.random.default_rng(7).standard_normal((labels.shape[0], 4))
    est = AttributeVectors("adjusted").fit(z, labels, ["Male", "Lipstick"])
    r = np.corrcoef(labels[:, 0], labels[:, 1])[0, 1]
    # with one other label, 1 - R^2 is 1 - r^2: the class counts times it
    np.testing.assert_allclose(est.effective_counts_, est.counts_ * (1 - r**2), rtol=1e-9)
    # a label the others fix exactly rests on no faces at all
    dup = np.column_stack([labels, labels[:, 1]])
    est = AttributeVectors("adjusted").fit(z, dup, ["Male", "Lipstick", "Lipstick2"])
    assert np.all(est.effective_counts_[1:] < 1e-6)

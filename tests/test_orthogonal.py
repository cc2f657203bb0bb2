"""The orthogonal method: a vector whose steps leave every free label's linear score alone,
on planted latents where the nuisance a plain mean difference carries is known."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from attributes.estimators import AttributeVectors, implied_by


def planted(n=6000, seed=0):
    """Target T on latent 0; a free label O (r = 0.2 with T) on latent 2, so T's mean
    difference picks up 0.2 * 2 = 0.4 along latent 2; C (r = 0.6 with T) on latent 3; S rare
    and only ever with T (implied by T = 0: absent) on latent 4; latent 1 is noise."""
    rng = np.random.default_rng(seed)
    t = rng.random(n) < 0.5
    o = np.where(t, rng.random(n) < 0.6, rng.random(n) < 0.4)
    c = np.where(t, rng.random(n) < 0.8, rng.random(n) < 0.2)
    s = t & (rng.random(n) < 0.1)
    z = 0.3 * rng.standard_normal((n, 6))
    z[:, 0] += 2.0 * t
    z[:, 2] += 2.0 * o
    z[:, 3] += 2.0 * c
    z[:, 4] += 2.0 * s
    y = np.stack([t, o, c, s], 1).astype(np.uint8)
    return z, y, ["T", "O", "C", "S"]


def test_orthogonal_drops_the_free_nuisance_and_keeps_correlated_and_implied_labels():
    z, y, names = planted()
    r = np.corrcoef(y.T.astype(float))
    assert 0.15 < r[0, 1] < 0.25 and r[0, 2] > 0.5 and abs(r[0, 3]) < 0.3
    mean = AttributeVectors("mean", attributes=["T"]).fit(z, y, names).vector("T")
    orth = AttributeVectors("orthogonal", attributes=["T"]).fit(z, y, names)
    v = orth.vector("T")
    assert orth.preserved_ == {"T": ["O"]}  # C is correlated, S is implied by T = 0
    assert mean[2] == pytest.approx(0.4, abs=0.06)  # the nuisance the mean difference carries
    assert abs(v[2]) < 0.06  # (almost) gone: O's normal leans a little on latent 0 too
    assert v[0] == pytest.approx(mean[0], abs=0.05)  # the target's own step is kept
    assert v[3] == pytest.approx(mean[3], abs=0.05)  # C may move with T, as in the data
    # O's linear score is unchanged by the step: orthogonal to an independently fitted normal
    n = LogisticRegression(C=1.0, max_iter=500).fit(z, y[:, 1]).coef_[0]
    assert abs(v @ n) / (np.linalg.norm(v) * np.linalg.norm(n)) < 0.02
    assert abs(mean @ n) / (np.linalg.norm(mean) * np.linalg.norm(n)) > 0.1


def test_implied_by_finds_a_rare_label_fixed_by_the_target():
    _, y, _ = planted()
    found = implied_by(y, 0, [1, 2, 3])
    assert list(found) == [3]
    p0, p1 = found[3]
    assert p0 == 0.0 and 0.05 < p1 < 0.15  # never without T; some with it


def test_orthogonal_with_a_classifier_base_and_a_bad_base_is_refused():
    z, y, names = planted(n=1500)
    est = AttributeVectors("orthogonal", attributes=["T"], base="classifier").fit(z, y, names)
    assert est.vector("T")[0] > 1.0
    with pytest.raises(Exception, match="unknown base 'cond'"):
        AttributeVectors("orthogonal", base="cond").fit(z, y, names)

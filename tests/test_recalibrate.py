"""`conceptvae vectors --recalibrate-only`: a bank's directions kept, strength 1 measured again
on other labelled faces (a new style), on the linear fake model of test_calibration where the
right strength is known."""

import numpy as np
import pytest
import torch
from test_calibration import D, LinearVAE, MarkerNet, S, _cache_images, cells_and_ramp
from test_evaluate import write_cache

import conceptvae.vectors as V
from attributes.bank import VectorBank
from attributes.errors import VectorError
from attributes.groups import GroupClassifier
from conceptvae.evaluate import Judge

torch.set_num_threads(1)

pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Train: z0, z1 = +-1 in four equal cells (A = z0 > 0, C = z1 > 0). Valid: |z0| = 0.04,
    ..., 0.80, 20 faces each side: a step of s in z0 adds A to (removes it from) the faces
    with |z0| < s, so all of them need a step over 0.80."""
    vae = LinearVAE()
    z = np.concatenate(cells_and_ramp(-0.5))
    labels = (z[:, :2] > 0).astype(np.uint8)
    partition = np.repeat([0, 1], [80, 40])
    root = tmp_path_factory.mktemp("recal")
    cache = write_cache(root / "cache", _cache_images(vae, z), labels, ["A", "C"], partition)
    judge = Judge(MarkerNet(), ["A", "C"], [0.5, 0.5], {"A": 1.0, "C": 0.6}, image_size=S)
    return vae, cache, judge


def planted_bank():
    """A bank made elsewhere: A's direction right but its strength 1 a step of 0.25 in z0,
    which adds A to 6 of these 20 faces; C's vector and its calibration record, which nothing
    here may touch."""
    fp = np.zeros((S, S), np.float32)
    meta = {
        "model_hash": "linear",
        "method": "mean",
        "label_source": "the faces it was fitted on",
        "calibration": {"A": {"scale": "judge", "unit": 1.0}, "C": {"scale": "judge", "unit": 3.0}},
        "removal_scale": {"A": 1.0, "C": 1.0},
    }
    vectors = {"A": np.array([0.25, 0, 0, 0]), "C": np.array([0, 0.3, 0.2, 0])}
    return VectorBank(vectors, metadata=meta, footprints={"A": fp, "C": fp})


def test_recalibrating_keeps_the_direction_and_finds_the_planted_strength(faces):
    vae, cache, judge = faces
    old = planted_bank()
    new, report = V.recalibrate_vectors(vae, old, cache, judge=judge, n_faces=50, progress=False)
    assert new.names == ["A"]  # the judge sees A only (C: accuracy 0.6)
    rec = new.metadata["calibration"]["A"]
    assert rec["scale"] == "judge" and rec["recalibrated_on"] == str(cache.path)
    # the direction unchanged, strength 1 now a step past 0.80 (every face): 3.8 times the
    # old one, where the calibration grid (3 x: 18 faces, 4 x: 20) crosses 98%
    assert rec["unit"] == pytest.approx(3.8, abs=1e-6)
    np.testing.assert_allclose(new["A"], [0.95, 0, 0, 0], rtol=1e-6)
    assert rec["add"]["success_at_1"] >= 0.98 and rec["remove"]["success_at_1"] >= 0.98
    assert new.removal_scale("A") == pytest.approx(1.0)
    assert new.footprints["A"].max() > 0  # measured again: the old one was blank
    merged = V.merge_banks(old, new)
    assert merged.names == ["A", "C"]
    np.testing.assert_array_equal(merged["C"], old["C"])  # what was not recalibrated is kept
    assert merged.metadata["calibration"]["C"] == {"scale": "judge", "unit": 3.0}
    assert merged.metadata["calibration"]["A"]["unit"] == pytest.approx(3.8, abs=1e-6)
    assert "recalibrated (strength 1 now" in V.describe_calibration(merged)
    assert "A 3.80x" in V.describe_calibration(merged)
    assert report.names == ["A"] and report.auc[0] == 1.0  # judged on these faces


def test_recalibrating_what_it_cannot_is_refused_by_name(faces):
    vae, cache, judge = faces
    with pytest.raises(VectorError, match="cannot see C .*leave it out of --attributes"):
        V.recalibrate_vectors(vae, planted_bank(), cache, judge=judge, attributes=["C"])
    one = VectorBank({"C": np.ones(D)}, metadata={"model_hash": "linear"})
    with pytest.raises(VectorError, match="has no vector of A: fit it first"):
        V.recalibrate_vectors(vae, one, cache, judge=judge, attributes=["A"])
    with pytest.raises(VectorError, match="nothing to recalibrate"):
        V.recalibrate_vectors(vae, one, cache, judge=judge)


def test_a_merge_keeps_the_swaps_of_a_group_whose_classifier_is_unchanged():
    """Recalibrating one hair colour keeps the group's classifier, so the other colours'
    swaps stay valid and are kept; a group fitted again drops them (they read the old one)."""
    clf = GroupClassifier(("A", "B"), np.zeros((3, D)), np.array([1.0, 0, 0]))
    meta = {"model_hash": "h"}
    old = VectorBank({"A": np.ones(D), "B": -np.ones(D)}, metadata=meta, groups=[clf],
                     swaps={"A": {"B": np.full(D, 0.5)}, "B": {"A": np.full(D, 0.25)}})  # fmt: skip
    same = VectorBank({"A": 2 * np.ones(D)}, metadata=meta, groups=[clf],
                      swaps={"A": {"B": np.full(D, 0.5)}})  # fmt: skip
    assert V.merge_banks(old, same).swaps["B"]["A"].tolist() == [0.25] * D
    refit = GroupClassifier(("A", "B"), np.ones((3, D)), np.array([1.0, 0, 0]))
    other = VectorBank({"A": 2 * np.ones(D)}, metadata=meta, groups=[refit])
    assert "B" not in V.merge_banks(old, other).swaps


def test_thresholds_set_on_unlabelled_photos_find_the_classes_again():
    """A judge whose logits moved with the style (every photo now above its old threshold)
    gets a threshold between the two classes again, and an estimate of its accuracy there;
    an attribute whose logits have one mode, or whose judged share is far from the share
    where the judge was trained, is left unseen and says why; too few photos are refused."""
    from conceptvae.errors import DataError
    from conceptvae.evaluation.judge import thresholds_set_on

    rng = np.random.default_rng(0)
    n = 1000
    truth = rng.random(n) < 0.3
    logits = np.stack(
        [
            np.where(truth, 9.0, 3.0) + rng.normal(0, 1, n),  # A: both classes moved up 6
            rng.normal(0, 1, n),  # B: one mode, nothing to split
            np.where(truth, 6.0, -6.0) + rng.normal(0, 1, n),  # C: 30% where 5% were
        ],
        1,
    )
    judge = Judge(MarkerNet(), ["A", "B", "C"], [0.5] * 3, {"A": 1.0, "B": 0.95, "C": 0.95},
                  image_size=S)  # fmt: skip
    old = 1 / (1 + np.exp(-logits[:, 0])) >= 0.5
    assert old.mean() > 0.99  # the old threshold calls almost every photo A
    new, why = thresholds_set_on(judge, logits, shares={"A": 0.3, "C": 0.05}, where="photos/")
    assert new.judged() == ["A"]
    verdict = 1 / (1 + np.exp(-logits[:, 0])) >= new.thresholds[0]
    assert (verdict == truth).mean() >= 0.99
    assert 4.5 < np.log(new.thresholds[0] / (1 - new.thresholds[0])) < 7.5
    assert new.accuracy["A"] >= 0.98
    assert set(why) == {"B", "C"}
    assert why["B"].startswith("its two classes overlap here")
    assert "28% of the photos positive against 5%" in why["C"]
    assert new.info["thresholds_set_on"] == "photos/" and new.net is judge.net
    with pytest.raises(DataError, match="photos/: 99 photos are too few"):
        thresholds_set_on(judge, logits[:99], where="photos/")


class ShiftedNet(torch.nn.Module):
    """MarkerNet in another style: A's logit raised by 30, so the old threshold calls A on
    faces without it down to z0 = -0.75."""

    def forward(self, x):
        return MarkerNet()(x) + torch.tensor([30.0, 0.0])


def test_unlabelled_photos_are_labelled_by_the_judge_and_recalibrate_like_labelled_ones(faces):
    vae, cache, _ = faces
    judge = Judge(ShiftedNet(), ["A", "C"], [0.5, 0.5], {"A": 1.0, "C": 0.6}, image_size=S)
    truth = cache.labels[:, 0].astype(bool)
    as_it_was = judge.decide(cache.batch(np.arange(len(cache))))[:, 0].numpy()
    assert (as_it_was != truth).sum() >= 15  # the moved judge mislabels its thresholds' faces
    photos = cache.relabelled(np.zeros((len(cache), 0)), [], "no labels")
    labelled, adapted, why = V.judge_labelled(photos, judge, planted_bank(), progress=False)
    assert labelled.attr_names == ["A"] and why == {}  # C: the judge never saw it
    np.testing.assert_array_equal(labelled.labels[:, 0].astype(bool), truth)
    assert labelled.meta["labels_from"].startswith("the judge's verdicts")
    assert cache.attr_names == ["A", "C"]  # the cache itself is untouched
    new, _ = V.recalibrate_vectors(vae, planted_bank(), labelled, judge=adapted, n_faces=50,
                                   progress=False, keep_longer=True)  # fmt: skip
    rec = new.metadata["calibration"]["A"]
    assert rec["unit"] == pytest.approx(3.8, abs=1e-6)  # as with the true labels
    assert rec["labels_from"] == labelled.meta["labels_from"]
    assert "at_least" not in rec["add"]  # it lengthened: no floor needed
    text = V.describe_calibration(V.merge_banks(planted_bank(), new))
    assert "A 3.80x" in text and "labelled by the judge's verdicts, its thresholds set on" in text
    assert "kept at the old strength where the new one was shorter: none" in text


def test_keep_longer_never_shortens_a_step(faces):
    """A bank twice as strong as it needs: recalibrated on labels its strength 1 halves; with
    keep_longer (for labels a judge gave) it stays, and the record says so."""
    vae, cache, judge = faces
    strong = planted_bank()
    strong = VectorBank({"A": np.array([1.9, 0, 0, 0])}, metadata=strong.metadata,
                        footprints={"A": strong.footprints["A"]})  # fmt: skip
    free, _ = V.recalibrate_vectors(vae, strong, cache, judge=judge, n_faces=50, progress=False)
    assert free.metadata["calibration"]["A"]["unit"] == pytest.approx(0.5, abs=0.03)
    kept, _ = V.recalibrate_vectors(vae, strong, cache, judge=judge, n_faces=50, progress=False,
                                    keep_longer=True)  # fmt: skip
    rec = kept.metadata["calibration"]["A"]
    assert rec["unit"] == 1.0 and rec["add"]["at_least"] and rec["remove"]["at_least"]
    np.testing.assert_allclose(kept["A"], [1.9, 0, 0, 0], rtol=1e-6)
    assert rec["add"]["success_at_1"] == 1.0
    assert "labelled by" not in V.describe_calibration(kept)  # true labels: no such line

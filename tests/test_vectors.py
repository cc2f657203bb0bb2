"""`conceptvae vectors`: encode, fit, save the bank into the run, report; and its bad input."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import conceptvae.vectors as V
from attributes.bank import VectorBank
from conceptvae.cli import cli
from conceptvae.data import open_dataset
from conceptvae.data.cache import open_cache, prepare
from conceptvae.model import ConceptVAE, VAEConfig

S = 64


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    err = [
        line for line in result.stderr.splitlines() if line.strip() and "img/s" not in line
    ]  # progress bars aside
    assert len(err) == 1, err
    for f in fragments:
        assert f in err[0], err[0]


def write_images(folder, n, bright, seed):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        arr = rng.integers(0, 60, (S, S, 3), dtype=np.uint8) + np.uint8(150 * bright)
        Image.fromarray(arr).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A 40-image labelled folder prepared at 64 px, and a tiny untrained model saved as RUN."""
    root = tmp_path_factory.mktemp("vec")
    src = root / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = ["filename,partition,Bright,Red,Never"]
    for i in range(40):
        bright, red = i % 2, (i // 2) % 2
        arr = rng.integers(0, 60, (S, S, 3), dtype=np.uint8) + np.uint8(120 * bright)
        arr[..., 0] += np.uint8(70 * red)
        Image.fromarray(arr).save(src / f"{i:03d}.png")
        rows.append(f"{i:03d}.png,{0 if i < 28 else 1},{bright},{red},0")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    prepare(open_dataset(src), root / "cache", image_size=S, workers=1, progress=False)
    torch.manual_seed(0)
    cfg = VAEConfig(image_size=S, latent_dim=8, patch_size=16, channels=(8,))
    ConceptVAE(cfg).save_pretrained(root / "run")
    return root


def fresh_run(data, tmp_path, name="run"):
    import shutil

    shutil.copytree(data / "run", tmp_path / name)
    return tmp_path / name


def test_vectors_are_the_mean_difference_of_the_models_posterior_means(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    r = run("vectors", run_dir, data / "cache", "--no-calibrate", "--method", "mean")
    assert r.exit_code == 0, r.output
    assert "skipping 1 labels with only one class" in r.stderr and "Never" in r.stderr
    bank = VectorBank.load(run_dir, model_hash=ConceptVAE.from_pretrained(run_dir).model_hash())
    assert bank.names == ["Bright", "Red"]

    # independent computation: encode the train split by hand, numpy means
    vae = ConceptVAE.from_pretrained(run_dir)
    cache = open_cache(data / "cache")
    idx = cache.split("train")
    with torch.no_grad():
        z = vae.encode(cache.batch(idx)).mean.double().numpy()
    y = np.asarray(cache.labels[idx])
    meta = json.loads((run_dir / "vectors.json").read_text())
    for j, name in enumerate(cache.attr_names[:2]):
        want = z[y[:, j] == 1].mean(0) - z[y[:, j] == 0].mean(0)
        # no judge here: the latent scale, 1.5 x the class-mean gap along the vector, which
        # for the mean difference itself is 1.5 x the vector
        cal = meta["metadata"]["calibration"][name]
        assert cal["scale"] == "latent"
        assert cal["unit"] == pytest.approx(1.5, rel=1e-5)
        np.testing.assert_allclose(bank[name], 1.5 * want, atol=1e-5)
        assert bank.footprints[name].shape == (S, S) and bank.footprints[name].max() > 0

    assert meta["metadata"]["method"] == "mean"
    assert meta["metadata"]["counts"]["Bright"] == [int((y[:, 0] == 0).sum()), int(y[:, 0].sum())]
    # the quality report: each vector with its own norm, an AUC, and the cosine matrix
    rep = json.loads((run_dir / V.REPORT_JSON).read_text())
    assert rep["names"] == ["Bright", "Red"]
    cos = np.asarray(rep["cosine"], dtype=np.float64)
    np.testing.assert_allclose(np.diag(cos), 1.0, atol=1e-5)
    np.testing.assert_allclose(cos, cos.T, atol=1e-6)
    text = (run_dir / V.REPORT_TEXT).read_text()
    for name in ("Bright", "Red"):
        assert rep["norms"][name] == pytest.approx(float(np.linalg.norm(bank[name])), rel=1e-4)
        auc = rep["auc"][name]
        assert auc is None or 0.0 <= auc <= 1.0
        row = next(line for line in text.splitlines() if line.startswith(name + " "))
        assert row.split()[1] == ("n/a" if auc is None else f"{auc:.3f}")
    assert rep["auc"]["Bright"] is not None and rep["auc"]["Bright"] > 0.9  # planted: separable
    with Image.open(run_dir / V.HEATMAP) as im:
        assert im.width >= 100 and im.height >= 100
        assert np.asarray(im.convert("RGB"), dtype=np.float32).std() > 10  # drawn, not blank
    assert "Bright" in r.output and "AUC" in r.output


def test_second_call_reads_the_latent_cache_and_a_new_model_does_not(data, tmp_path, monkeypatch):
    run_dir = fresh_run(data, tmp_path)
    assert run("vectors", run_dir, data / "cache").exit_code == 0
    files = sorted((run_dir / V.LATENTS_DIR).glob("*.npy"))
    assert [f.name.split("-")[0] for f in files] == ["train", "valid"]
    first = VectorBank.load(run_dir)["Bright"].copy()

    def no_encoding(*a, **k):
        raise AssertionError("encoded again")

    monkeypatch.setattr(V, "encode_means", no_encoding)
    r = run("vectors", run_dir, data / "cache", "--method", "balanced")
    assert r.exit_code == 0, r.output
    assert VectorBank.load(run_dir).metadata["method"] == "balanced"
    monkeypatch.undo()

    vae = ConceptVAE.from_pretrained(run_dir)  # another model in the same folder
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.01)
    vae.save_pretrained(run_dir)
    r = run("vectors", run_dir, data / "cache")
    assert r.exit_code == 0, r.output
    assert "made for another model" in r.stderr
    after = sorted((run_dir / V.LATENTS_DIR).glob("*.npy"))
    assert len(after) == 2 and set(after).isdisjoint(files)  # old latents replaced
    assert not np.array_equal(VectorBank.load(run_dir)["Bright"], first)


def test_conditional_vector_is_orthogonal_to_the_condition(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    r = run("vectors", run_dir, data / "cache", "--attributes", "Bright", "--condition", "Red")
    assert r.exit_code == 0, r.output
    bank = VectorBank.load(run_dir)
    assert bank.names == ["Bright"]
    assert bank.metadata["method"] == "conditional"
    # the Red direction it was made orthogonal to: the balanced Red vector
    r = run("vectors", run_dir, data / "cache", "--attributes", "Red", "--method", "balanced")
    assert r.exit_code == 0, r.output
    bank = VectorBank.load(run_dir)
    assert bank.names == ["Bright", "Red"]  # added to the bank, Bright kept
    assert bank.metadata["vectors"]["Bright"]["method"] == "conditional"
    assert bank.metadata["vectors"]["Red"]["method"] == "balanced"
    a, b = bank["Bright"], bank["Red"]
    cos = a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    assert abs(cos) < 1e-4


def test_a_base_method_with_a_condition_is_saved_as_conditional(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    r = run("vectors", run_dir, data / "cache", "--attributes", "Bright", "--method", "balanced",
            "--condition", "Red")  # fmt: skip
    assert r.exit_code == 0, r.output
    meta = VectorBank.load(run_dir).metadata
    assert meta["method"] == "conditional" and meta["base"] == "balanced"
    assert meta["vectors"]["Bright"]["method"] == "conditional"


def test_best_measures_the_chosen_vectors_again_on_other_faces(data, monkeypatch):
    # two candidates; on the faces they are compared on, balanced leaks least and wins. Its
    # strength must then come from a second calibration of its own fitted vector on faces the
    # choice did not see (a winner's numbers on the faces it won on are optimistic)
    monkeypatch.setattr(V, "BEST_OF", ("mean", "balanced"))
    calls = []

    def fake_calibrate(vae, judge, vectors, *, seed=0, avoid=None, n_faces=200, **kw):
        calls.append({"seed": seed, "avoid": avoid, "vectors": dict(vectors), "n": n_faces})
        k = len(calls) - 1  # 0: mean, 1: balanced, 2: the chosen again
        unit, leak, succ = [(1.0, 0.05, 0.98), (2.0, 0.01, 0.98), (3.0, 0.02, 0.96)][k]
        rec = lambda: {"reached": True, "success_at_1": succ, "leakage_at_1": leak,  # noqa: E731
                       "curve": {"success": [succ]}}  # fmt: skip
        return {
            "vectors": {n: np.float32(unit) * np.float32(v) for n, v in vectors.items()},
            "removal_scale": {n: 1.0 for n in vectors},
            "footprints": {n: np.full((S, S), 0.1, np.float32) for n in vectors},
            "calibration": {n: {"scale": "judge", "target": 0.98, "unit": unit, "add": rec(),
                                "remove": rec(), "footprint_peak": 0.1} for n in vectors},
            "probe_rows": {n: {"add": np.arange(3) + 10 * k, "remove": np.arange(2)}
                           for n in vectors},
        }  # fmt: skip

    monkeypatch.setattr(V, "calibrate", fake_calibrate)
    vae = ConceptVAE.from_pretrained(data / "run")
    bank, _ = V.fit_vectors(vae, open_cache(data / "cache"), method="best", judge=object(),
                            attributes=["Bright", "Red"], progress=False, n_faces=100,
                            confirm_faces=300)  # fmt: skip
    assert len(calls) == 3 and [c["seed"] for c in calls] == [0, 0, 1]
    # the choice compares candidates on n_faces; the chosen strength is read off more faces
    assert [c["n"] for c in calls] == [100, 100, 300]
    assert calls[0]["avoid"] is None and calls[1]["avoid"] is None
    meta = bank.metadata
    for name in bank.names:
        assert meta["methods"][name] == "balanced"
        # the balanced vector as fitted, measured again away from the faces it was chosen on
        np.testing.assert_array_equal(calls[2]["vectors"][name], calls[1]["vectors"][name])
        assert calls[2]["avoid"][name]["add"].tolist() == [0, 1, 2]
        np.testing.assert_allclose(bank[name], 3.0 * calls[1]["vectors"][name], rtol=1e-6)
        rec = meta["calibration"][name]
        assert rec["unit"] == 3.0 and rec["add"]["success_at_1"] == 0.96
        # and what the choice saw is kept beside it
        assert rec["chosen_on"]["add"] == {"success_at_1": 0.98, "leakage_at_1": 0.01}
    # asked for fewer faces than the choice saw, the second draw still takes as many
    calls.clear()
    V.fit_vectors(vae, open_cache(data / "cache"), method="best", judge=object(),
                  attributes=["Bright"], progress=False, n_faces=120, confirm_faces=50)  # fmt: skip
    assert [c["n"] for c in calls] == [120, 120, 120]


def test_vectors_passes_its_face_counts_to_the_fit(data, monkeypatch, tmp_path):
    # `--calibration-faces` and `--confirm-faces` reach fit_vectors, with the documented defaults
    seen = []

    def fake_fit(vae, cache, run_dir, **kw):
        seen.append((kw["n_faces"], kw["confirm_faces"]))
        raise V.VectorError("stop here")

    monkeypatch.setattr(V, "fit_vectors", fake_fit)
    run_dir = fresh_run(data, tmp_path)
    r = run("vectors", run_dir, data / "cache", "--calibration-faces", "150",
            "--confirm-faces", "450")  # fmt: skip
    assert r.exit_code != 0 and "stop here" in r.output
    r = run("vectors", run_dir, data / "cache")
    assert seen == [(150, 450), (200, V.CONFIRM_FACES)]


def test_vectors_passes_its_exclusive_groups_to_the_fit(data, monkeypatch, tmp_path):
    # each --exclusive is a group; "none" asks for no swaps; without it, the default (None)
    seen = []

    def fake_fit(vae, cache, run_dir, **kw):
        seen.append(kw["groups"])
        raise V.VectorError("stop here")

    monkeypatch.setattr(V, "fit_vectors", fake_fit)
    run_dir = fresh_run(data, tmp_path)
    run("vectors", run_dir, data / "cache", "--exclusive", "Bright, Red", "--exclusive", "A,B")
    run("vectors", run_dir, data / "cache", "--exclusive", "none")
    run("vectors", run_dir, data / "cache")
    assert seen == [[["Bright", "Red"], ["A", "B"]], [], None]


def test_evaluate_passes_its_exclusive_groups_and_holds_on(data, monkeypatch, tmp_path):
    import conceptvae.evaluate as E

    seen = []

    def fake_evaluate(vae, cache, latents, judge, **kw):
        seen.append((kw["groups"], kw["holds"]))
        raise V.VectorError("stop here")

    monkeypatch.setattr(E, "evaluate", fake_evaluate)
    monkeypatch.setattr(E, "load_or_train_judge", lambda run, cache, **kw: "the judge")
    run_dir = fresh_run(data, tmp_path)
    for args in (("--exclusive", "Bright,Red"), ("--exclusive", "none", "--no-holds"), ()):
        r = run("evaluate", run_dir, data / "cache", "-o", tmp_path / "report", *args)
        assert r.exit_code != 0 and "stop here" in r.output
    assert seen == [([["Bright", "Red"]], True), ([], False), (None, True)]


def test_a_group_whose_labels_overlap_is_refused_before_any_encoding(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    one_line_error(
        run("vectors", run_dir, data / "cache", "--exclusive", "Bright,Red"),
        "--exclusive: Bright and Red are both on for", "leave one out",
    )  # fmt: skip
    assert not (run_dir / "latents").exists()  # refused before encoding a face
    one_line_error(
        run("vectors", run_dir, data / "cache", "--exclusive", "Bright,Blue"),
        "unknown attribute 'Blue' in --exclusive",
    )


def test_swaps_only_needs_a_bank_and_a_judge(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    one_line_error(run("vectors", run_dir, data / "cache", "--swaps-only"),
                   "has no vectors to add swaps to")  # fmt: skip
    r = run("vectors", run_dir, data / "cache", "--swaps-only", "--no-calibrate")
    assert r.exit_code != 0 and "--swaps-only calibrates swaps" in r.output


def test_swaps_only_saves_the_swaps_and_keeps_the_vectors(data, monkeypatch, tmp_path):
    """`--swaps-only` hands RUN's bank, the judge and the groups to add_swaps and saves what
    it returns: the swaps are read back from RUN, the vectors byte for byte as they were."""
    import conceptvae.evaluate as E
    from attributes.groups import GroupClassifier

    run_dir = fresh_run(data, tmp_path)
    assert run("vectors", run_dir, data / "cache", "--no-calibrate").exit_code == 0
    before = (run_dir / "vectors.safetensors").read_bytes()
    seen = {}

    def fake_add_swaps(vae, bank, judge, cache, run_dir, **kw):
        seen.update(kw, judge=judge, names=bank.names)
        clf = GroupClassifier(("Bright", "Red"), np.zeros((3, 8)), np.array([1.0, 0, 0]))
        return VectorBank({n: bank[n] for n in bank.names}, metadata=bank.metadata,
                          groups=[clf], swaps={"Red": {"Bright": np.full(8, 0.5)}})  # fmt: skip

    monkeypatch.setattr(V, "add_swaps", fake_add_swaps)
    monkeypatch.setattr(E, "load_or_train_judge", lambda run, cache, **kw: "the judge")
    r = run("vectors", run_dir, data / "cache", "--swaps-only", "--exclusive", "Bright,Red",
            "--confirm-faces", "300")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert seen["judge"] == "the judge" and seen["groups"] == [["Bright", "Red"]]
    assert seen["n_faces"] == 300 and seen["names"] == ["Bright", "Red"]
    assert "saved 1 swaps" in r.output and "vectors are unchanged" in r.output
    back = VectorBank.load(run_dir)
    assert back.swaps["Red"]["Bright"].tolist() == [0.5] * 8
    assert (run_dir / "vectors.safetensors").read_bytes() == before


def test_vectors_saves_a_reader_per_label_that_reads_its_labels(data, tmp_path):
    """Every fit writes RUN/readers.safetensors: one reader per label of DATA, which reads
    the planted labels off the held-out latents."""
    from conceptvae.hold import Readers

    run_dir = fresh_run(data, tmp_path)
    assert run("vectors", run_dir, data / "cache", "--no-calibrate").exit_code == 0
    readers = Readers.load(run_dir)
    cache = open_cache(data / "cache")
    assert readers.names == list(cache.attr_names)
    vae = ConceptVAE.from_pretrained(run_dir)
    idx, z = V.split_latents(vae, cache, "valid", run_dir, progress=False)
    y = np.asarray(cache.labels[idx]).astype(bool)
    read = z @ readers.weight.T + readers.bias > 0
    assert ((read == y).mean(0) > 0.9).all(), (read == y).mean(0)


def test_holds_only_needs_a_bank_and_saves_holds_and_readers_keeping_the_vectors(
    data, monkeypatch, tmp_path
):
    import conceptvae.evaluate as E

    run_dir = fresh_run(data, tmp_path)
    one_line_error(run("vectors", run_dir, data / "cache", "--holds-only"),
                   "has no vectors to choose holds for")  # fmt: skip
    r = run("vectors", run_dir, data / "cache", "--holds-only", "--swaps-only")
    assert r.exit_code != 0 and "--holds-only chooses holds" in r.output
    assert run("vectors", run_dir, data / "cache", "--no-calibrate").exit_code == 0
    before = (run_dir / "vectors.safetensors").read_bytes()
    (run_dir / "readers.safetensors").unlink()
    seen = {}

    def fake_add_holds(vae, bank, judge, cache, readers, run_dir, **kw):
        seen.update(kw, judge=judge, readers=readers.names)
        meta = bank.metadata
        meta["calibration"] = {"Bright": {"add": {"hold": {"labels": ["Red"], "kept": True,
                               "n_faces": 9, "success_at_1": 1.0, "leakage_at_1": 0.0,
                               "plain": {"success_at_1": 1.0, "leakage_at_1": 0.5}}}}}  # fmt: skip
        return VectorBank({n: bank[n] for n in bank.names}, metadata=meta)

    monkeypatch.setattr(V, "add_holds", fake_add_holds)
    monkeypatch.setattr(E, "load_or_train_judge", lambda run, cache, **kw: "the judge")
    r = run("vectors", run_dir, data / "cache", "--holds-only", "--confirm-faces", "300")
    assert r.exit_code == 0, r.output
    assert seen["judge"] == "the judge" and seen["n_faces"] == 300
    assert seen["pushes"] == ()  # longer held steps are tried only when asked
    assert seen["readers"] == list(open_cache(data / "cache").attr_names)
    assert "kept in 1 of 1 directions" in r.output
    assert (run_dir / "vectors.safetensors").read_bytes() == before
    assert VectorBank.load(run_dir).metadata["calibration"]["Bright"]["add"]["hold"]["kept"]
    assert (run_dir / "readers.safetensors").is_file()
    r = run("vectors", run_dir, data / "cache", "--holds-only", "--push")
    from conceptvae.hold import HOLD_PUSHES

    assert r.exit_code == 0, r.output
    assert seen["pushes"] == HOLD_PUSHES == (1.15, 1.3)


def test_recalibrate_only_needs_a_bank_and_replaces_only_what_it_recalibrated(
    data, monkeypatch, tmp_path
):
    """`--recalibrate-only` refuses a fit's options and a run with no bank, hands RUN's bank,
    the judge, the names and the faces to recalibrate_vectors, and saves its vectors over
    RUN's: the others byte for byte as they were."""
    import conceptvae.evaluate as E

    run_dir = fresh_run(data, tmp_path)
    one_line_error(run("vectors", run_dir, data / "cache", "--recalibrate-only"),
                   "has no vectors to recalibrate")  # fmt: skip
    for extra in (["--replace"], ["--method", "mean"], ["--holds-only"], ["--no-calibrate"],
                  ["--condition", "Red"], ["--exclusive", "none"]):  # fmt: skip
        r = run("vectors", run_dir, data / "cache", "--recalibrate-only", *extra)
        assert r.exit_code == 2 and "--recalibrate-only keeps RUN's vectors" in r.output
    assert run("vectors", run_dir, data / "cache", "--no-calibrate").exit_code == 0
    old = VectorBank.load(run_dir)
    seen = {}

    def fake_recalibrate(vae, bank, cache, run_dir, **kw):
        seen.update(kw, names=bank.names)
        meta = bank.metadata
        meta["calibration"] = {"Bright": {"unit": 2.0, "recalibrated_on": str(cache.path)}}
        report = V.Report(["Bright"], np.ones(1), np.ones(1), np.ones((1, 1)), {}, problems={})
        return VectorBank({"Bright": 2 * bank["Bright"]}, metadata=meta), report

    monkeypatch.setattr(V, "recalibrate_vectors", fake_recalibrate)
    monkeypatch.setattr(E, "load_or_train_judge", lambda run, cache, **kw: "the judge")
    r = run("vectors", run_dir, data / "cache", "--recalibrate-only", "--attributes", "Bright",
            "--confirm-faces", "300", "--calibration-faces", "400")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert seen["judge"] == "the judge" and seen["attributes"] == ["Bright"]
    assert seen["n_faces"] == 400 and seen["names"] == ["Bright", "Red"]
    assert seen["keep_longer"] is False  # labelled faces: the strengths go either way
    assert "recalibrated 1 vectors (2 in the bank)" in r.output
    back = VectorBank.load(run_dir)
    np.testing.assert_array_equal(back["Bright"], 2 * old["Bright"])
    np.testing.assert_array_equal(back["Red"], old["Red"])
    assert "Bright 2.00x" in r.output


def test_recalibrate_only_on_unlabelled_photos_has_the_banks_judge_label_them(
    data, monkeypatch, tmp_path
):
    """Photos with no labels: the judge that calibrated the bank (RUN/judge, else --judge)
    labels them (V.judge_labelled), and recalibrate_vectors gets those labels, the judge
    with its thresholds set there and keep_longer; what it cannot tell apart is named, and
    RUN's readers are kept as they were. With no judge to label them, a one-line error says
    what to give."""
    import shutil

    import conceptvae.evaluate as E

    run_dir = fresh_run(data, tmp_path)
    assert run("vectors", run_dir, data / "cache", "--no-calibrate").exit_code == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in sorted((data / "src").glob("*.png")):
        shutil.copy(f, photos / f.name)
    one_line_error(run("vectors", run_dir, photos, "--recalibrate-only"),
                   "has no labels and", "holds no judge to label its photos")  # fmt: skip
    (run_dir / "judge").mkdir()
    (run_dir / "judge" / "judge.json").write_text("{}")
    monkeypatch.setattr(E.Judge, "load", classmethod(lambda cls, d, **kw: f"judge of {d}"))
    seen = {}

    def fake_labelled(cache, judge, bank, **kw):
        seen.update(labelled_by=judge)
        y = (np.arange(len(cache)) % 2)[:, None]
        why = {"Red": "its two classes overlap here"}
        return cache.relabelled(y, ["Bright"], "the judge's verdicts"), "the judge, set", why

    def fake_recalibrate(vae, bank, cache, run_dir, **kw):
        seen.update(kw, labels=list(cache.attr_names), source=cache.meta["labels_from"])
        report = V.Report(["Bright"], np.ones(1), np.ones(1), np.ones((1, 1)), {}, problems={})
        meta = bank.metadata
        meta["calibration"] = {"Bright": {"unit": 1.5, "recalibrated_on": str(cache.path)}}
        return VectorBank({"Bright": 1.5 * bank["Bright"]}, metadata=meta), report

    monkeypatch.setattr(V, "judge_labelled", fake_labelled)
    monkeypatch.setattr(V, "recalibrate_vectors", fake_recalibrate)
    monkeypatch.setattr(E, "load_or_train_judge", lambda *a, **kw: pytest.fail("trained"))
    readers = (run_dir / "readers.safetensors").read_bytes()
    r = run("vectors", run_dir, photos, "--recalibrate-only")
    assert r.exit_code == 0, r.output
    # RUN's readers (true labels) are kept, not fitted again on the judge's verdicts
    assert (run_dir / "readers.safetensors").read_bytes() == readers
    assert seen["labelled_by"] == f"judge of {run_dir / 'judge'}"
    assert seen["judge"] == "the judge, set" and seen["keep_longer"] is True
    assert seen["labels"] == ["Bright"] and seen["source"] == "the judge's verdicts"
    assert "has no labels: the judge in" in r.stderr and "their strengths only lengthen" in r.stderr
    assert "not recalibrated: Red: its two classes overlap here" in r.stderr
    r = run("vectors", run_dir, photos, "--recalibrate-only", "--judge", tmp_path / "j")
    one_line_error(r, "holds no judge to label its photos")  # --judge is where it looks
    r = run("vectors", run_dir, photos, "--recalibrate-only", "--attributes", "red")
    one_line_error(r, "does not tell Red apart on the photos", "its two classes overlap here",
                   "leave it out of --attributes")  # fmt: skip


def test_vectors_calibrates_with_the_judge_given(data, monkeypatch, tmp_path):
    """--judge DIR is loaded as it is (never retrained); a folder with no judge is named."""
    import conceptvae.evaluate as E

    run_dir = fresh_run(data, tmp_path)
    assert run("vectors", run_dir, data / "cache", "--no-calibrate").exit_code == 0
    one_line_error(run("vectors", run_dir, data / "cache", "--swaps-only", "--judge",
                       tmp_path / "nojudge"), "nojudge")  # fmt: skip
    seen = {}
    monkeypatch.setattr(E.Judge, "load", classmethod(lambda cls, d, **kw: f"judge of {d}"))
    monkeypatch.setattr(E, "load_or_train_judge", lambda *a, **kw: pytest.fail("trained"))
    monkeypatch.setattr(V, "add_swaps", lambda vae, bank, judge, *a, **kw: seen.update(
        judge=judge) or bank)  # fmt: skip
    r = run("vectors", run_dir, data / "cache", "--swaps-only", "--judge", tmp_path / "j")
    assert r.exit_code == 0, r.output
    assert seen["judge"] == f"judge of {tmp_path / 'j'}"


def test_positive_and_negative_folders_add_a_named_vector(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    assert run("vectors", run_dir, data / "cache").exit_code == 0
    write_images(tmp_path / "with", 12, 1, seed=1)
    write_images(tmp_path / "without", 12, 0, seed=2)
    r = run(
        "vectors", run_dir, "--positive", tmp_path / "with", "--negative", tmp_path / "without",
        "--name", "Glasses",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    bank = VectorBank.load(run_dir)
    assert bank.names == ["Bright", "Red", "Glasses"]
    info = bank.metadata["vectors"]["Glasses"]
    assert "with" in info["label_source"] and sum(info["counts"]) <= 24

    r = run("vectors", run_dir, "--show")
    assert r.exit_code == 0, r.output
    assert "Glasses" in r.output and "Bright" in r.output and "3 vectors" in r.output


def test_unknown_attribute_suggests_the_name(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    one_line_error(
        run("vectors", run_dir, data / "cache", "--attributes", "Brigth"),
        "Brigth",
        "did you mean 'Bright'",
    )
    assert not (run_dir / "vectors.json").exists()


def test_condition_equal_to_the_target(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    one_line_error(
        run("vectors", run_dir, data / "cache", "--attributes", "Red", "--condition", "Red"),
        "Red",
    )


def test_label_with_one_class_named_when_asked_for(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    one_line_error(
        run("vectors", run_dir, data / "cache", "--attributes", "Never"), "Never", "0 positives"
    )


def test_data_without_labels(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    plain = tmp_path / "plain"
    write_images(plain, 6, 0, seed=3)
    one_line_error(run("vectors", run_dir, plain), str(plain))


def test_show_without_a_bank(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    one_line_error(run("vectors", run_dir, "--show"), "no vectors yet")


def test_a_cache_at_another_size(data, tmp_path):
    run_dir = fresh_run(data, tmp_path)
    small = prepare(
        open_dataset(data / "src"), tmp_path / "c32", image_size=32, workers=1, progress=False
    )
    one_line_error(run("vectors", run_dir, small.path), "32 px", "64 px")


def test_attributes_package_imports_neither_conceptvae_nor_torch():
    import subprocess
    import sys

    code = (
        "import sys, attributes, attributes.bank, attributes.report, attributes.estimators\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('conceptvae', 'torch'))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_folder_of_aligned_faces_is_cut_in_the_models_frame(tmp_path):
    # 178 x 218 images (CelebA's aligned shape) in a labels folder: prepared with the model's
    # crop (148 here), not the folder default (the largest square, 178)
    src = tmp_path / "faces"
    src.mkdir()
    rng = np.random.default_rng(0)
    rows = ["filename,Bright"]
    for i in range(12):
        arr = rng.integers(0, 60, (218, 178, 3), dtype=np.uint8) + np.uint8(150 * (i % 2))
        Image.fromarray(arr).save(src / f"{i:02d}.png")
        rows.append(f"{i:02d}.png,{i % 2}")
    (src / "labels.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(0)
    cfg = VAEConfig(image_size=S, latent_dim=8, patch_size=16, channels=(8,), crop=148)
    ConceptVAE(cfg).save_pretrained(tmp_path / "run")
    r = run("vectors", tmp_path / "run", src, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "run-cache" / "meta.json").read_text())["crop"] == 148

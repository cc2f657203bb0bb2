"""The attribute judge and the edit metrics: a judge that learns planted attributes, and edit
success, leakage and the strength for 90% on a fake model where the right answers are known."""

import json
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conceptvae.data.cache import open_cache
from conceptvae.errors import DataError, OutputError
from conceptvae.evaluate import (
    JUDGE_DIR,
    Judge,
    evaluate,
    load_or_train_judge,
    psnr,
    ssim,
    strength_for,
    train_judge,
    write_report,
)
from conceptvae.evaluation import charts

torch.set_num_threads(1)


def write_cache(path, images, labels, names, partition):
    """A prepared cache written directly: images uint8 (N, 3, S, S), labels (N, A) 0/1."""
    path.mkdir(parents=True)
    n, s = images.shape[0], images.shape[-1]
    np.save(path / "images.npy", images.astype(np.uint8))
    np.save(path / "labels.npy", np.asarray(labels, np.uint8).reshape(n, len(names)))
    np.save(path / "partition.npy", np.asarray(partition, np.int8))
    np.save(path / "identity.npy", np.full(n, -1, np.int32))
    (path / "attributes.json").write_text(json.dumps(list(names)))
    (path / "filenames.json").write_text(json.dumps([f"{i:04d}.png" for i in range(n)]))
    meta = {"kind": "conceptvae prepared cache", "format_version": 1, "count": n, "image_size": s}
    (path / "meta.json").write_text(json.dumps({**meta, "source": str(path)}))
    return open_cache(path)


# -- the judge ---------------------------------------------------------------------------------


def planted_images(n, seed, s=32):
    """A = a bright left half, B = a red tint, independent, on noisy grey."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    x = rng.uniform(0.25, 0.45, (n, 1, 1, 1)) + rng.normal(0, 0.05, (n, 3, s, s))
    x[:, :, :, : s // 2] += 0.3 * a[:, None, None, None]
    x[:, 0] += 0.25 * b[:, None, None]
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8), np.stack([a, b], 1)


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    root = tmp_path_factory.mktemp("judge")
    images, labels = planted_images(240, seed=0)
    partition = np.repeat([0, 1, 2], [160, 40, 40])
    cache = write_cache(root / "cache", images, labels, ["A", "B"], partition)
    judge = load_or_train_judge(root / "run", cache, epochs=12, batch_size=32, progress=False)
    return root, cache, judge


def test_judge_learns_planted_attributes_on_held_out_images(judged):
    _, cache, judge = judged
    assert judge.accuracy["A"] > 0.9 and judge.accuracy["B"] > 0.9
    assert judge.judged() == ["A", "B"]
    test = cache.split("test")
    pred = judge.decide(cache.batch(test)).numpy()
    y = cache.labels[test].astype(bool)
    for j in range(2):
        balanced = 0.5 * (pred[y[:, j], j].mean() + (~pred[~y[:, j], j]).mean())
        assert balanced > 0.9


def test_judge_saves_and_loads_to_the_same_predictions(judged):
    root, cache, judge = judged
    folder = root / "run" / JUDGE_DIR
    meta = json.loads((folder / "judge.json").read_text())
    assert meta["attributes"] == ["A", "B"] and set(meta["thresholds"]) == {"A", "B"}
    assert meta["balanced_accuracy"] == judge.accuracy
    assert meta["data_key"] and meta["training"]["train_images"] == 160
    loaded = Judge.load(folder)
    x = cache.batch(cache.split("test"))
    assert torch.equal(loaded.predict(x), judge.predict(x))
    assert torch.equal(loaded.decide(x), judge.decide(x))
    stamp = (folder / "judge.safetensors").stat().st_mtime_ns
    again = load_or_train_judge(root / "run", cache, epochs=1, progress=False)  # no retraining
    assert (folder / "judge.safetensors").stat().st_mtime_ns == stamp
    np.testing.assert_array_equal(again.thresholds, judge.thresholds)


def test_judge_is_reused_for_the_same_data_prepared_elsewhere_and_not_for_changed_data(
    judged, tmp_path, monkeypatch
):
    """The key is the data's content: a copy of the cache in another folder, with another
    meta.json (other source path, time), reuses RUN/judge; one changed pixel or label does not."""
    import shutil

    import conceptvae.evaluation.judge as J

    root, cache, judge = judged
    run = tmp_path / "run"
    shutil.copytree(root / "run", run)
    copy = tmp_path / "elsewhere" / "cache"
    shutil.copytree(cache.path, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta.update(source="/somewhere/else", created="2031-01-01T00:00:00Z", seconds=99.0)
    (copy / "meta.json").write_text(json.dumps(meta))

    def retrained(*a, **kw):
        raise AssertionError("trained a new judge")

    monkeypatch.setattr(J, "train_judge", retrained)
    again = load_or_train_judge(run, open_cache(copy))
    np.testing.assert_array_equal(again.thresholds, judge.thresholds)

    images = np.load(copy / "images.npy")
    images[7, 0, 3, 3] ^= 1
    np.save(copy / "images.npy", images)
    with pytest.raises(AssertionError, match="trained a new judge"):
        load_or_train_judge(run, open_cache(copy))
    images[7, 0, 3, 3] ^= 1
    np.save(copy / "images.npy", images)
    load_or_train_judge(run, open_cache(copy))  # the same content again: reused
    labels = np.load(copy / "labels.npy")
    labels[3, 1] ^= 1
    np.save(copy / "labels.npy", labels)
    with pytest.raises(AssertionError, match="trained a new judge"):
        load_or_train_judge(run, open_cache(copy))


def test_judge_training_stops_at_max_minutes(judged):
    _, cache, _ = judged
    judge = train_judge(cache, None, epochs=50, batch_size=32, max_minutes=1e-6, progress=False)
    assert judge.info["training"]["stopped"] == "max_minutes"
    assert judge.info["training"]["steps"] == 0


# -- metrics on a planted model ------------------------------------------------------------------

S, D = 16, 4


def code(z):
    """Latents written into pixel row 0 of channel 0, exactly: value = 128 + 50 z."""
    return np.rint(128 + 50 * np.asarray(z)).astype(np.uint8)


class FakeVAE(nn.Module):
    """encode reads z back from the pixels; decode paints the left half bright iff z0 > 0 and
    the right half red iff z1 > 0, so the judge below sees exactly the signs of z0 and z1."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(image_size=S, latent_dim=D)

    @property
    def device(self):
        return self.dummy.device

    def model_hash(self):
        return "fake"

    def encode(self, x):
        return SimpleNamespace(mean=(torch.round(x[:, 0, 0, :D] * 255) - 128) / 50)

    def decode(self, z):
        img = torch.full((z.shape[0], 3, S, S), 0.5)
        img[:, :, :, : S // 2] = torch.where(z[:, 0] > 0, 0.9, 0.1)[:, None, None, None]
        img[:, 0, :, S // 2 :] = torch.where(z[:, 1] > 0, 0.9, 0.1)[:, None, None]
        return img


class KnownNet(nn.Module):
    """Logit A from the left half's brightness, logit B from the right half's red."""

    def forward(self, x):
        a = x[:, :, :, : S // 2].mean((1, 2, 3))
        b = x[:, 0, :, S // 2 :].mean((1, 2))
        return 40 * (torch.stack([a, b], 1) - 0.5)


def known_judge(accuracy=1.0):
    return Judge(KnownNet(), ["A", "B"], [0.5, 0.5], {"A": accuracy, "B": accuracy}, image_size=S)


def latent_images(z):
    x = np.full((len(z), 3, S, S), 100, np.uint8)
    x[:, 0, 0, :D] = code(z)
    return x


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """Train: z0, z1 = +-1 in four equal cells (A = z0 > 0, B = z1 > 0), so every method's
    vector for A is (2, 0, 0, 0). Test: |z0| and |z1| = 0.1, 0.3, ..., 1.9, ten of each sign."""
    root = tmp_path_factory.mktemp("planted")
    cells = [(a, b) for a in (0, 1) for b in (0, 1) for _ in range(20)]
    z_train = np.array([[2 * a - 1, 2 * b - 1, 0, 0] for a, b in cells], np.float64)
    mags = 0.2 * np.arange(10) + 0.1
    z0 = np.concatenate([-mags, mags])
    z1 = np.array([(-1) ** i * mags[(i // 2) % 10] for i in range(20)])
    z_test = np.stack([z0, z1, np.zeros(20), np.zeros(20)], 1)
    z = np.concatenate([z_train, z_train[:8], z_test])
    labels = (z[:, :2] > 0).astype(np.uint8)
    partition = np.repeat([0, 1, 2], [80, 8, 20])
    cache = write_cache(root / "cache", latent_images(z), labels, ["A", "B"], partition)
    result = evaluate(
        FakeVAE(),
        cache,
        root / "run",
        known_judge(),
        strengths=(0.5, 1, 1.5),
        n_faces=10,
        n_samples=50,
        progress=False,
    )
    return root, cache, result


@pytest.mark.parametrize("method", ["mean", "balanced", "classifier", "conditional"])
@pytest.mark.parametrize("attr", ["A", "B"])
def test_edit_success_leakage_and_strength_for_90_match_the_planted_answer(planted, method, attr):
    _, _, result = planted
    e = result["edits"][attr]
    assert e["n_add"] == 10 and e["n_remove"] == 10
    assert e["baseline"] == {"add": 0.0, "remove": 0.0}
    assert e["independent"] == ["B" if attr == "A" else "A"]  # labels uncorrelated in train
    for direction in ("add", "remove"):
        r = e["methods"][method][direction]
        # moving z0 by 2s turns every face with |z0| < 2s: 5 of 10 at s = 0.5, all at s >= 1
        assert r["success"] == [0.5, 1.0, 1.0]
        assert r["strength_90"] == pytest.approx(0.9)
        assert r["leakage_mean"] == [0.0, 0.0, 0.0]
        assert r["leakage_at_90"] == 0.0
        assert 1 > r["ssim"][0] > r["ssim"][1] == r["ssim"][2] > -1  # SSIM may be negative
        assert r["ssim_at_90"] == pytest.approx(0.2 * r["ssim"][0] + 0.8 * r["ssim"][1])
        assert r["identity_kept"] is None  # not SynthFaces
    assert result["vectors"][method]["auc"][attr] == pytest.approx(1.0)


def test_planted_result_has_reconstruction_prior_rates_and_example_grids(planted):
    _, _, result = planted
    assert result["status"] == "ok" and result["split"] == "test"
    assert result["judge"]["judged"] == ["A", "B"]
    assert result["reconstruction"]["n"] == 20
    rates = result["prior"]["rates"]["A"]
    assert rates["labels"] == 0.5 and rates["reconstructed"] == 0.5
    assert 0 < rates["samples"] < 1  # half the prior has z0 > 0
    ex = result["examples"]["A"]
    assert ex["images"].shape == (6, 2 + 4, 3, S, S) and ex["images"].dtype == np.uint8
    assert ex["col_labels"][:3] == ["input", "D(mu)", "mean +0.9/-0.9"]
    assert result["summary"][0] == {
        "attribute": "A",
        "method": "mean",
        "direction": "add",
        "strength_90": pytest.approx(0.9),
        "leakage_at_90": 0.0,
        "ssim_at_90": pytest.approx(result["edits"]["A"]["methods"]["mean"]["add"]["ssim_at_90"]),
    }


def test_write_report_writes_tables_and_plots_and_refuses_a_full_folder(planted, tmp_path):
    _, _, result = planted
    out = tmp_path / "report"
    paths = write_report(result, out)
    names = {p.name for p in paths}
    for f in ("report.json", "report.md", "success_A.png", "examples_A.png", "leakage.png",
              "leakage_B.png", "cosine_mean.png"):  # fmt: skip
        assert f in names and (out / f).is_file()
    data = json.loads((out / "report.json").read_text())
    assert "examples" not in data and data["edits"]["A"]["methods"]["mean"]["add"]["success"]
    md = (out / "report.md").read_text()
    assert "| A | mean | 0.90 | 0.000 |" in md and "## Prior samples" in md
    with pytest.raises(OutputError, match="not empty"):
        write_report(result, out)
    write_report(result, out, force=True)
    assert (out / "report.md").read_text() == md


def _is_a_chart(path, min_size=(250, 150), max_size=(2000, 2000)):
    """A readable PNG of a sensible size with more than a few colours drawn on white."""
    with Image.open(path) as im:
        im.load()
        rgb = np.asarray(im.convert("RGB"))
    h, w = rgb.shape[:2]
    assert min_size[0] <= w <= max_size[0] and min_size[1] <= h <= max_size[1], (path, w, h)
    assert tuple(rgb[0, 0]) == (255, 255, 255)  # a white page...
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 20  # ...with something drawn on it
    return rgb


def test_report_charts_are_pictures_of_the_measured_numbers(planted, tmp_path):
    _, _, result = planted
    out = tmp_path / "report"
    write_report(result, out)
    for name in ("success_A.png", "success_B.png", "leakage.png", "leakage_A.png"):
        _is_a_chart(out / name)
    for m in ("mean", "balanced", "classifier", "conditional"):
        _is_a_chart(out / f"cosine_{m}.png", min_size=(200, 200))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left

    # success: one line per method and panel, through the baseline and the measured success
    fig = charts.success_figure(result, "A")
    add, remove = fig.axes[:2]
    assert add.get_title() == "adding A (n=10)" and remove.get_title() == "removing A (n=10)"
    assert [line.get_label() for line in add.lines[:4]] == [
        "mean", "balanced", "classifier", "conditional"
    ]  # fmt: skip
    for line in add.lines[:4] + remove.lines[:4]:
        assert list(line.get_xdata()) == [0.0, 0.5, 1.0, 1.5]
        assert list(line.get_ydata()) == [0.0, 0.5, 1.0, 1.0]
    assert list(add.lines[4].get_ydata()) == [0.9, 0.9]  # the 90% target, dashed

    # leakage: one bar per attribute and method at its 90% strength (all 0 here)
    fig = charts.leakage_figure(result)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["A", "B"]
    assert [p.get_width() for p in ax.patches] == [0.0] * 8
    fig = charts.attribute_leakage_figure(result, "A")
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["B"]


def test_charts_draw_missing_values_as_gaps_and_not_reached():
    fig = charts.line_panels(
        [("p", [("m", [0, 1, 2], [0.1, None, 0.7])])], xlabel="s", ylabel="y", hline=0.5
    )
    (line, target) = fig.axes[0].lines
    assert list(line.get_xdata()) == [0.0, 2.0] and list(line.get_ydata()) == [0.1, 0.7]
    fig = charts.bar_panels(["g1", "g2"], [("t", [("m", [0.25, None]), ("n", [0.5, 0.1])])])
    ax = fig.axes[0]
    assert [p.get_width() for p in ax.patches] == [0.25, 0.0, 0.5, 0.1]
    assert [t.get_text() for t in ax.texts] == ["0.25", "n/r", "0.50", "0.10"]
    assert ax.get_xlim()[1] >= 0.5


def test_charts_are_saved_atomically_and_matplotlib_loads_only_when_drawing(tmp_path):
    fig = charts.line_panels([("p", [("m", [0, 1], [0.2, 0.8])])])
    path = charts.save_png(fig, tmp_path / "chart.png")
    assert [p.name for p in tmp_path.iterdir()] == ["chart.png"]
    _is_a_chart(path)
    code = "import sys, conceptvae.evaluate; print('matplotlib' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_charts_drawn_in_threads_match_charts_drawn_one_by_one():
    """No pyplot state is shared: four threads drawing at once get the same PNGs as one."""
    from concurrent.futures import ThreadPoolExecutor

    def draw(k):
        series = [("m", [0, 1, 2], [0.1 * k, 0.5, 0.9]), ("n", [0, 1, 2], [0.9, 0.5, 0.1 * k])]
        return charts.png_bytes(charts.line_panels([(f"panel {k}", series)], hline=0.5))

    alone = [draw(k) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(draw, range(4)))
    assert together == alone and len(set(alone)) == 4


def test_a_judge_good_at_nothing_gives_no_edit_metrics(planted, tmp_path):
    root, cache, _ = planted
    result = evaluate(FakeVAE(), cache, None, known_judge(0.8), n_faces=4, progress=False)
    assert result["status"] == "no_judged_attributes"
    assert "no attribute" in result["message"]
    assert "edits" not in result and "prior" not in result
    assert result["judge"]["left_out"] == {"A": 0.8, "B": 0.8}
    write_report(result, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "reaches balanced accuracy >= 0.90 on no attribute" in md
    assert "Per attribute" not in md
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["report.json", "report.md"]


def test_unjudged_attribute_requested_is_refused(planted):
    _, cache, _ = planted
    judge = Judge(KnownNet(), ["A", "B"], [0.5, 0.5], {"A": 1.0, "B": 0.7}, image_size=S)
    with pytest.raises(DataError, match="not accurate enough.*B 0.7"):
        evaluate(FakeVAE(), cache, None, judge, attributes=["b"], progress=False)


def test_evaluate_needs_labels(tmp_path):
    images = latent_images(np.zeros((6, D)))
    cache = write_cache(tmp_path / "c", images, np.zeros((6, 0)), [], [0, 0, 1, 1, 2, 2])
    with pytest.raises(DataError, match="evaluate needs labelled data"):
        evaluate(FakeVAE(), cache, None, known_judge(), progress=False)


# -- helpers -------------------------------------------------------------------------------------


def test_strength_for_interpolates_the_success_curve():
    assert strength_for([0.5, 1, 1.5], [0.5, 1.0, 1.0], 0.0) == pytest.approx(0.9)
    assert strength_for([1, 2], [0.3, 0.6], 0.1) is None
    assert strength_for([1, 2], [0.95, 1.0], 0.92) == 0.0
    assert strength_for([1, 2], [0.5, 0.9], 0.0) == pytest.approx(2.0)


def test_ssim_and_psnr_known_values():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(ssim(x, x), torch.ones(2))
    noisy = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert (ssim(x, noisy) < 1).all() and (ssim(x, noisy) > ssim(x, 1 - x)).all()
    assert torch.allclose(psnr(x * 0 + 0.5, x * 0 + 0.6), torch.full((2,), 20.0), atol=1e-4)


def test_ssim_and_psnr_agree_with_scikit_image():
    """Our batched torch SSIM is Wang et al.'s as scikit-image computes it (Gaussian window,
    sigma 1.5, population covariance, data range 1, border cropped), per channel then averaged."""
    metrics = pytest.importorskip("skimage.metrics")
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 40, 48, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    y[2] = 1 - x[2]  # and a dissimilar pair
    ours, ours_psnr = ssim(x, y), psnr(x, y)
    for i in range(3):
        a, b = (t[i].permute(1, 2, 0).double().numpy() for t in (x, y))
        ref = metrics.structural_similarity(
            a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )  # fmt: skip
        assert float(ours[i]) == pytest.approx(ref, abs=1e-4)
        ref_psnr = metrics.peak_signal_noise_ratio(a, b, data_range=1.0)
        assert float(ours_psnr[i]) == pytest.approx(ref_psnr, abs=1e-3)

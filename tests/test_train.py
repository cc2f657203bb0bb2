import errno
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import conceptvae.train as train_mod
from conceptvae.cli import cli
from conceptvae.data.cache import open_cache, prepare
from conceptvae.errors import DataError, ModelError, TrainError
from conceptvae.model import ConceptVAE, VAEConfig
from conceptvae.train import CHECKPOINT_NAME, TrainConfig, train

S = 64


def tiny_model(**kw) -> VAEConfig:
    # patch 16 -> a 4 x 4 grid straight away: one stage, a few thousand parameters
    base = dict(image_size=S, latent_dim=8, patch_size=16, channels=(8,))
    base.update(kw)
    return VAEConfig(**base)


def tiny_train(**kw) -> TrainConfig:
    base = dict(
        epochs=2, batch_size=4, lr=3e-3, kl_warmup_steps=3, device="cpu", log_every=2, probe=True
    )
    base.update(kw)
    return TrainConfig(**base)


def write_folder(root, n=20, partition=None, size=S):
    """n small images with 2 labels in a folder + labels.csv (the raw-dataset form)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = ["filename,partition,Bright,Red"]
    for i in range(n):
        bright, red = i % 2, (i // 2) % 2
        arr = rng.integers(0, 60, (size, size, 3), dtype=np.uint8) + np.uint8(120 * bright)
        arr[..., 0] += np.uint8(70 * red)
        Image.fromarray(arr).save(root / f"{i:03d}.png")
        p = partition[i] if partition is not None else (0 if i % 5 < 3 else 1 + (i % 5 == 4))
        rows.append(f"{i:03d}.png,{p},{bright},{red}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    src = write_folder(root / "src", n=20)
    from conceptvae.data import open_dataset

    prepare(open_dataset(src), root / "cache", image_size=S, workers=1, progress=False)
    return root / "cache"


def params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------
# the loop


def test_a_run_writes_model_checkpoint_metrics_and_grids(cache_dir, tmp_path):
    out = tmp_path / "run"
    model = train(cache_dir, out, tiny_model(), tiny_train(), progress=False)
    assert not model.training
    loaded = ConceptVAE.from_pretrained(out)
    assert same(params(loaded), params(model))
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if not r.get("end_of_epoch")]
    epochs = [r for r in lines if r.get("end_of_epoch")]
    assert [r["step"] for r in steps] == [2, 4, 6]  # 12 train images / 4 = 3 steps per epoch
    assert {"loss", "recon", "kl", "mse", "img_per_s", "lr", "beta"} <= steps[0].keys()
    assert steps[0]["beta"] < steps[-1]["beta"] == pytest.approx(0.05)  # KL warm-up
    assert [r["epoch"] for r in epochs] == [1, 2]
    for r in epochs:
        assert np.isfinite([r["valid_elbo"], r["valid_mse"], r["valid_psnr"]]).all()
        assert set(r["probe"]) == {"Bright", "Red"}
        assert all(0.0 <= v <= 1.0 for v in r["probe"].values())
    for sub in ("samples", "recon"):
        for e in (1, 2):
            assert (out / sub / f"epoch_{e:03d}.png").is_file()
    assert Image.open(out / "samples" / "epoch_001.png").size == (8 * (S + 2) + 2,) * 2
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"]) == (6, 2, 0)
    # the attribute head is sized from the data (2 labels); crop stays None (not CelebA)
    assert ckpt["model_config"] == {**tiny_model().to_dict(), "attr_dim": 2}


@pytest.mark.parametrize("stop_at", [2, 4])  # mid-epoch and just after an epoch boundary
def test_interrupted_and_resumed_run_is_bit_identical(cache_dir, tmp_path, stop_at):
    mc = tiny_model(region_weight=2.0, attr_dim=2)  # the region map and the attr head too
    full = train(cache_dir, tmp_path / "a", mc, tiny_train(probe=False), progress=False)
    train(cache_dir, tmp_path / "b", mc, tiny_train(probe=False, max_steps=stop_at), progress=False)
    ckpt = torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["step"] == stop_at
    resumed = train(
        cache_dir, tmp_path / "b", mc, tiny_train(probe=False), resume=True, progress=False
    )
    assert same(params(full), params(resumed))
    a = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    b = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()

    def strip(rows):
        return [{k: v for k, v in json.loads(r).items() if k != "img_per_s"} for r in rows]

    assert strip(a) == strip(b)


def test_ctrl_c_saves_at_a_step_boundary_and_resume_matches(cache_dir, tmp_path, monkeypatch):
    import os
    import signal

    mc = tiny_model()
    full = train(cache_dir, tmp_path / "a", mc, tiny_train(probe=False), progress=False)
    calls = {"n": 0}
    real = ConceptVAE.loss

    def loss_then_ctrl_c(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step: the step still completes
        return real(self, *a, **k)

    monkeypatch.setattr(ConceptVAE, "loss", loss_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        train(cache_dir, tmp_path / "b", mc, tiny_train(probe=False), progress=False)
    monkeypatch.setattr(ConceptVAE, "loss", real)
    assert torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)["step"] == 5
    resumed = train(
        cache_dir, tmp_path / "b", mc, tiny_train(probe=False), resume=True, progress=False
    )
    assert same(params(full), params(resumed))


def test_raw_dataset_is_prepared_beside_the_run_and_reused(tmp_path):
    src = write_folder(tmp_path / "src", n=10)
    cfg = tiny_train(epochs=1, batch_size=2, probe=False, sample_every_epoch=False)
    train(src, tmp_path / "run", tiny_model(), cfg, progress=False)
    cache = open_cache(tmp_path / "run-cache")
    assert cache.image_size == S and len(cache) == 10
    stamp = (tmp_path / "run-cache" / "meta.json").stat().st_mtime_ns
    train(src, tmp_path / "run2", tiny_model(), cfg, cache=tmp_path / "run-cache", progress=False)
    assert (tmp_path / "run-cache" / "meta.json").stat().st_mtime_ns == stamp


def test_max_minutes_stops_cleanly_with_a_resumable_checkpoint(cache_dir, tmp_path):
    cfg = tiny_train(max_minutes=1e-9, probe=False)
    train(cache_dir, tmp_path / "run", tiny_model(), cfg, progress=False)
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["step"] == 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_template_points_follow_the_celeba_crop():
    pts = train_mod.template_points({"layout": "celeba-official", "crop": 148}, 64)
    # eyes level, mouth below and between them, all inside the frame
    assert pts.shape == (3, 2) and pts[0, 1] == pytest.approx(pts[1, 1])
    assert pts[0, 0] < pts[2, 0] < pts[1, 0] and pts[2, 1] > pts[0, 1]
    assert (pts > 0).all() and (pts < 63).all()
    assert train_mod.template_points({"layout": "folder-csv"}, 64).tolist() == [[31.5, 31.5]]


# ---------------------------------------------------------------------------------------------
# bad input


def test_not_a_dataset(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataError, match="is not a dataset"):
        train(tmp_path / "junk", tmp_path / "run", tiny_model(), tiny_train(), progress=False)


def test_empty_train_split(tmp_path):
    src = write_folder(tmp_path / "src", n=6, partition=[1, 1, 1, 2, 2, 2])
    with pytest.raises(TrainError, match="train split .* is empty"):
        train(src, tmp_path / "run", tiny_model(), tiny_train(), progress=False)


def test_image_size_that_the_model_does_not_support(tmp_path, cache_dir):
    with pytest.raises(ModelError, match="use one of 64, 128, 256"):
        tiny_model(image_size=32)
    with pytest.raises(TrainError, match="holds 64 px images .* 128 px"):
        train(cache_dir, tmp_path / "run", VAEConfig(image_size=128, latent_dim=8, patch_size=32,
              channels=(8,)), tiny_train(), progress=False)  # fmt: skip


def test_batch_larger_than_the_train_split(cache_dir, tmp_path):
    with pytest.raises(TrainError, match=r"--batch-size 64 is larger .*\(12 images\).* 12 or less"):
        train(cache_dir, tmp_path / "run", tiny_model(), tiny_train(batch_size=64), progress=False)


def test_resume_without_a_checkpoint(cache_dir, tmp_path):
    with pytest.raises(TrainError, match="no checkpoint at .*checkpoint.pt"):
        train(cache_dir, tmp_path / "run", tiny_model(), tiny_train(), resume=True, progress=False)


def test_resume_with_another_model_config_names_the_keys(cache_dir, tmp_path):
    cfg = tiny_train(max_steps=1, probe=False)
    train(cache_dir, tmp_path / "run", tiny_model(), cfg, progress=False)
    with pytest.raises(TrainError, match="latent_dim: checkpoint 8, given 16"):
        train(
            cache_dir, tmp_path / "run", tiny_model(latent_dim=16), cfg, resume=True, progress=False
        )


def test_cuda_without_cuda(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrainError, match="CUDA is not available"):
        train(cache_dir, tmp_path / "run", tiny_model(), tiny_train(device="cuda"), progress=False)


def test_nan_loss_stops_names_the_step_and_keeps_the_last_checkpoint(
    cache_dir, tmp_path, monkeypatch
):
    calls = {"n": 0}
    real = ConceptVAE.loss

    def nan_at_5(self, *a, **k):
        calls["n"] += 1
        out = real(self, *a, **k)
        if calls["n"] == 5:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(ConceptVAE, "loss", nan_at_5)
    cfg = tiny_train(probe=False)
    with pytest.raises(TrainError, match=r"nan at step 5 .*step 3\).*lower --lr"):
        train(cache_dir, tmp_path / "run", tiny_model(), cfg, progress=False)
    ckpt = torch.load(tmp_path / "run" / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["step"] == 3  # the end of epoch 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_disk_full_while_saving_keeps_the_previous_checkpoint(cache_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(cache_dir, out, tiny_model(), tiny_train(max_steps=2, probe=False), progress=False)
    before = (out / CHECKPOINT_NAME).read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    cfg = tiny_train(max_steps=4, probe=False)
    with pytest.raises(TrainError, match=r"disk full .* previous checkpoint \(step 2\) is kept"):
        train(cache_dir, out, tiny_model(), cfg, resume=True, progress=False)
    monkeypatch.undo()
    assert (out / CHECKPOINT_NAME).read_bytes() == before
    assert torch.load(out / CHECKPOINT_NAME, weights_only=True)["step"] == 2
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_bad_train_config_values():
    with pytest.raises(TrainError, match="lr must be"):
        TrainConfig(lr=0)
    with pytest.raises(TrainError, match="device"):
        TrainConfig(device="tpu")


# ---------------------------------------------------------------------------------------------
# command line

TINY = ["--image-size", "64", "--latent-dim", "8", "--patch-size", "16", "--channels", "8"]


def test_cli_train_sample_reconstruct(cache_dir, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(
        cli,
        ["train", str(cache_dir), "-o", str(run), *TINY, "--epochs", "1", "--batch-size", "4",
         "--device", "cpu", "--no-probe"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (run / "model.safetensors").is_file() and (run / CHECKPOINT_NAME).is_file()

    r = CliRunner().invoke(cli, ["sample", str(run), "-n", "6", "-o", str(tmp_path / "s.png")])
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "s.png").size == (3 * (S + 2) + 2, 2 * (S + 2) + 2)

    r = CliRunner().invoke(
        cli, ["reconstruct", str(run), str(cache_dir), "-n", "4", "-o", str(tmp_path / "r.png")]
    )
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "r.png").size == (4 * (S + 2) + 2, 2 * (S + 2) + 2)

    # a raw dataset works too (its first valid images are prepared on the fly)
    src = write_folder(tmp_path / "src", n=10)
    r = CliRunner().invoke(
        cli, ["reconstruct", str(run), str(src), "-n", "2", "-o", str(tmp_path / "r2.png")]
    )
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "r2.png").size == (2 * (S + 2) + 2,) * 2  # one pair a row

    # the run exists: refused without --resume/--force; --resume takes the run's settings
    r = CliRunner().invoke(cli, ["train", str(cache_dir), "-o", str(run), "--device", "cpu"])
    assert r.exit_code != 0 and "--resume" in r.output
    r = CliRunner().invoke(
        cli, ["train", str(cache_dir), "-o", str(run), "--resume", "--epochs", "2", "--no-probe"]
    )
    assert r.exit_code == 0, r.output
    assert torch.load(run / CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    r = CliRunner().invoke(
        cli,
        ["train", str(cache_dir), "-o", str(run), *TINY, "--epochs", "1", "--batch-size", "4",
         "--device", "cpu", "--no-probe", "--force"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert torch.load(run / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    assert not (run / "samples" / "epoch_002.png").exists()


def test_cli_errors_are_one_line(cache_dir, tmp_path):
    r = CliRunner().invoke(
        cli, ["train", str(cache_dir), "-o", str(tmp_path / "r"), "--image-size", "32"]
    )
    assert r.exit_code != 0 and "use one of 64, 128, 256" in r.output
    assert "Traceback" not in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(cli, ["train", str(cache_dir), "-o", str(tmp_path / "r2"), "--resume"])
    assert r.exit_code != 0 and "no checkpoint" in r.output
    r = CliRunner().invoke(
        cli, ["sample", str(tmp_path / "nothing"), "-o", str(tmp_path / "x.png")]
    )
    assert r.exit_code != 0 and "does not exist" in r.output


def test_cli_attr_weight_sizes_the_attribute_head(cache_dir, tmp_path):
    run = tmp_path / "run"
    r = CliRunner().invoke(
        cli,
        ["train", str(cache_dir), "-o", str(run), *TINY, "--epochs", "1", "--batch-size", "4",
         "--device", "cpu", "--no-probe", "--attr-weight", "0.5", "--region-weight", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["attr_dim"], cfg["attr_weight"], cfg["region_weight"]) == (2, 0.5, 1.0)


def test_region_weights_peak_on_each_images_landmarks(tmp_path):
    from conceptvae.data import LabelledImages

    d = tmp_path / "src"
    d.mkdir()
    names = []
    for i in range(3):
        Image.fromarray(np.full((S, S, 3), 100, np.uint8)).save(d / f"{i}.png")
        names.append(f"{i}.png")
    lm = np.zeros((3, 5, 2), np.float32)
    lm[:, 0] = [[11, 21], [21, 11], [31, 41]]  # left eye, 1-based source pixels
    lm[:, 1] = [[51, 21], [45, 11], [41, 41]]
    lm[:, 3:5] = [[31, 51]]  # both mouth corners at one point
    src = LabelledImages(
        root=tmp_path, layout="folder-csv", image_dir=d, filenames=names, attr_names=["a"],
        labels=np.array([[0], [1], [0]], np.uint8), partition=np.zeros(3, np.int8), landmarks=lm,
    )  # fmt: skip
    cache = prepare(src, tmp_path / "cache", image_size=S, workers=1, progress=False)
    feed = train_mod._Feeder(
        cache, tiny_model(region_weight=4.0, region_sigma=0.03), torch.device("cpu")
    )
    _, _, w = feed(np.array([2, 0]))
    assert w.shape == (2, 1, S, S)
    assert w.mean().item() == pytest.approx(1.0, rel=1e-5)
    for b, i in enumerate([2, 0]):
        for x, y in (lm[i, 0], lm[i, 1], lm[i, 3]):
            # a local peak at each 0-based landmark pixel
            assert w[b, 0, int(y) - 1, int(x) - 1] > 2 * w[b, 0].median()


def test_linear_probe_scores_a_rare_but_linearly_encoded_attribute():
    # 4% positives, encoded weakly along one latent axis: an unweighted logistic regression
    # predicts "no" for nearly everything and scores about 0.5 balanced accuracy.
    from conceptvae.train import linear_probe

    rng = np.random.default_rng(0)

    def make(n):
        y = (rng.random((n, 2)) < [0.04, 0.5]).astype(np.uint8)
        z = rng.normal(size=(n, 16))
        z[:, 0] += 2.0 * y[:, 0]
        z[:, 1] += 3.0 * y[:, 1]
        return z, y

    (ztr, ytr), (zva, yva) = make(2000), make(2000)
    scores = linear_probe(ztr, ytr, zva, yva, ["Rare", "Common"])
    assert scores["Rare"] > 0.8
    assert scores["Common"] > 0.9
    # a label the latents do not encode stays at chance
    unrelated_tr = (rng.random((2000, 1)) < 0.3).astype(np.uint8)
    unrelated_va = (rng.random((2000, 1)) < 0.3).astype(np.uint8)
    noise = linear_probe(ztr, unrelated_tr, zva, unrelated_va, ["Unrelated"])
    assert noise["Unrelated"] < 0.6


# ---------------------------------------------------------------------------------------------
# the learning-rate plan: over epochs, or over the time budget (--max-minutes without --epochs)


class FakeClock:
    """A deterministic _clock: every reading is ``dt`` seconds after the previous one."""

    def __init__(self, start=0.0, dt=1.0):
        self.t, self.dt = start - dt, dt

    def __call__(self):
        self.t += self.dt
        return self.t


def expected_lr(lr, ratio, elapsed, budget):
    """The time plan's cosine, written out independently of train.cosine_lr."""
    floor = lr * ratio
    return floor + (lr - floor) * 0.5 * (1 + np.cos(np.pi * min(elapsed / budget, 1.0)))


def records(out, key=None):
    """(step records, end-of-run records) of a run's metrics.jsonl; with ``key``, the records
    that have it."""
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if key is not None:
        return [r for r in lines if key in r]
    return [r for r in lines if "loss" in r], [r for r in lines if r.get("end_of_run")]


def timed(**kw):
    base = dict(epochs=None, max_minutes=2.0, probe=False, log_every=1, sample_every_epoch=False)
    base.update(kw)
    return tiny_train(**base)


def test_time_planned_lr_is_the_cosine_of_elapsed_over_budget_and_ends_at_the_floor(
    cache_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(train_mod, "_clock", FakeClock(start=500.0))
    cfg = timed(max_minutes=1.9)  # 114 fake seconds (about 3 a step): it ends mid-epoch
    out = tmp_path / "run"
    train(cache_dir, out, tiny_model(), cfg, progress=False)
    steps, final = records(out)
    assert len(steps) > 15 and all(r["lr_plan"] == "time" for r in steps)
    elapsed = [r["elapsed_s"] for r in steps]
    assert elapsed == sorted(elapsed) and elapsed[0] < 2 and 104 < elapsed[-1] < 114
    for r in steps:
        assert r["lr"] == pytest.approx(expected_lr(3e-3, 0.05, r["elapsed_s"], 114), rel=1e-9)
    lrs = [r["lr"] for r in steps]
    assert lrs[0] == pytest.approx(3e-3, rel=1e-3) and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] - 1.5e-4 < 0.01 * (3e-3 - 1.5e-4)  # the last step is at the floor
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["elapsed_s"] >= 114 and ckpt["step"] == steps[-1]["step"]
    assert ckpt["batch_in_epoch"] != 0  # stopped mid-epoch
    assert ckpt["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1.5e-4, rel=1e-12)
    assert ckpt["lr_plan"] == {"by": "time", "minutes": 1.9, "schedule": "cosine",
                               "lr": 3e-3, "min_lr": 3e-3 * 0.05}  # fmt: skip
    assert ckpt["train_config"]["epochs"] is None
    # the model the budget ended with is evaluated once, at the stop
    assert len(final) == 1 and final[0]["step"] == ckpt["step"]
    assert final[0]["budget_s"] == pytest.approx(114) and final[0]["elapsed_s"] >= 114
    assert np.isfinite(final[0]["valid_psnr"])
    assert records(out, "valid_psnr")[-1] == final[0]


def test_a_resumed_time_planned_run_continues_the_schedule(cache_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "_clock", FakeClock())
    train(cache_dir, tmp_path / "full", tiny_model(), timed(), progress=False)
    full_steps, _ = records(tmp_path / "full")

    out = tmp_path / "run"
    monkeypatch.setattr(train_mod, "_clock", FakeClock(start=10.0))
    train(cache_dir, out, tiny_model(), timed(max_steps=10), progress=False)
    saved = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 10 and 20 < saved["elapsed_s"] < 60
    before, _ = records(out)
    # another process, another clock: the run's time goes on from the checkpoint
    monkeypatch.setattr(train_mod, "_clock", FakeClock(start=7000.0))
    train(cache_dir, out, tiny_model(), timed(), resume=True, progress=False)
    steps, final = records(out)
    assert steps[: len(before)] == before
    after = steps[len(before) :]
    assert after[0]["step"] == 11
    assert saved["elapsed_s"] < after[0]["elapsed_s"] < saved["elapsed_s"] + 5
    for r in after:
        assert r["lr"] == pytest.approx(expected_lr(3e-3, 0.05, r["elapsed_s"], 120), rel=1e-9)
    assert after[0]["lr"] < before[-1]["lr"]  # not back to the peak
    # the same budget, about the same number of steps as the run that was not interrupted
    assert abs(steps[-1]["step"] - full_steps[-1]["step"]) <= 2
    assert [r["step"] for r in records(out, "valid_psnr")][-1] == steps[-1]["step"]
    # resuming a run whose budget is spent trains no further
    monkeypatch.setattr(train_mod, "_clock", FakeClock())
    train(cache_dir, out, tiny_model(), timed(), resume=True, progress=False)
    assert torch.load(out / CHECKPOINT_NAME, weights_only=True)["step"] == steps[-1]["step"]
    assert records(out) == (steps, final)


def test_with_epochs_the_lr_is_planned_over_steps_and_max_minutes_only_stops(
    cache_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(train_mod, "_clock", FakeClock())
    out = tmp_path / "run"
    cfg = tiny_train(epochs=4, max_minutes=0.5, probe=False, log_every=1)  # 30 fake seconds
    train(cache_dir, out, tiny_model(), cfg, progress=False)
    steps, final = records(out)
    total = 4 * 3
    assert 3 < len(steps) < total and not final  # cut midway by the time limit
    for r in steps:
        assert r["lr_plan"] == "epochs" and "elapsed_s" not in r
        assert r["lr"] == pytest.approx(expected_lr(3e-3, 0.05, r["step"], total), rel=1e-6)
    ckpt = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    assert ckpt["lr_plan"]["by"] == "epochs" and ckpt["lr_plan"]["steps"] == total
    assert ckpt["optimizer"]["param_groups"][0]["lr"] > 0.2 * 3e-3  # not decayed to the floor


def test_epochs_none_needs_a_time_budget():
    with pytest.raises(TrainError, match="epochs=None plans the run over max_minutes"):
        TrainConfig(epochs=None)


def test_cli_max_minutes_alone_plans_by_time_and_resume_keeps_the_plan(
    cache_dir, tmp_path, monkeypatch
):
    seen = []

    def fake_train(data, run, model_config, config, **kw):
        seen.append(config)

    base = ["train", str(cache_dir), *TINY, "--batch-size", "4", "--device", "cpu", "--no-probe"]
    monkeypatch.setattr(train_mod, "train", fake_train)
    for extra in (["--max-minutes", "5"], ["--max-minutes", "5", "--epochs", "20"], []):
        r = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / "new"), *extra])
        assert r.exit_code == 0, r.output
    assert [(c.epochs, c.max_minutes) for c in seen] == [(None, 5.0), (20, 5.0), (20, None)]
    monkeypatch.undo()

    # real checkpoints of both plans, then resumes through the CLI
    train(cache_dir, tmp_path / "t", tiny_model(), timed(max_steps=1), progress=False)
    train(cache_dir, tmp_path / "e", tiny_model(), tiny_train(max_steps=1), progress=False)
    monkeypatch.setattr(train_mod, "train", fake_train)
    seen.clear()
    for run, extra in (
        ("t", []),  # keeps its budget: the schedule goes on
        ("t", ["--max-minutes", "3"]),  # a new total budget
        ("e", ["--max-minutes", "3"]),  # an epochs run keeps its epochs; the time only stops
        ("e", []),
    ):
        r = CliRunner().invoke(cli, [*base, "-o", str(tmp_path / run), "--resume", *extra])
        assert r.exit_code == 0, r.output
    got = [(c.epochs, c.max_minutes) for c in seen]
    assert got == [(None, 2.0), (None, 3.0), (2, 3.0), (2, None)]


def _ddp_time_worker(rank, world, port, cache, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    # the ranks' clocks disagree (rank 1's runs 3x fast from another origin): both must
    # follow rank 0's, for the LR and for the stop
    train_mod._clock = FakeClock(start=100.0 * rank, dt=1.0 + 2.0 * rank)
    cfg = TrainConfig(epochs=None, max_minutes=1.0, batch_size=2, device="cpu", log_every=1,
                      kl_warmup_steps=2, probe=False, sample_every_epoch=False)  # fmt: skip
    model = train(cache, out, tiny_model(), cfg, progress=False)
    torch.save(model.state_dict(), os.path.join(os.path.dirname(out), f"rank{rank}.pt"))


def test_ddp_ranks_follow_rank0s_clock_for_the_time_planned_lr_and_stop(tmp_path):
    import torch.multiprocessing as mp
    from test_ddp import _cache, _free_port

    cache = _cache(tmp_path)
    out = tmp_path / "run"
    mp.spawn(_ddp_time_worker, args=(2, _free_port(), str(cache), str(out)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    steps, _ = records(out)
    assert len(steps) > 10  # rank 1's clock alone would have stopped after about a third
    for r in steps:
        assert r["lr"] == pytest.approx(expected_lr(1e-3, 0.05, r["elapsed_s"], 60), rel=1e-9)
    assert steps[-1]["elapsed_s"] > 50

import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conceptvae.data.cache as cache_mod
from conceptvae.data import LabelledImages, open_dataset
from conceptvae.data.cache import BatchLoader, is_cache, open_cache, prepare
from conceptvae.errors import DataError, OutputError


def _colour(i):
    return (10 + 9 * i, 200 - 7 * i, (31 * i) % 256)


def _index_of(rgb_chw):
    """Which source row a (3, S, S) cache image came from (inverse of _colour)."""
    return int(round((float(np.asarray(rgb_chw[0]).mean()) - 10) / 9))


def _jpeg_bytes(arr, quality=95):
    b = io.BytesIO()
    Image.fromarray(arr).save(b, "JPEG", quality=quality)
    return b.getvalue()


def _source(tmp_path, n=12, bad=None, layout="folder-csv", size=(40, 50), partition=True):
    """n flat-colour images (even rows PNG, odd rows JPEG); image i's colour encodes i.

    ``bad`` maps a row to raw bytes written instead of its image (corrupt / empty / truncated).
    """
    d = tmp_path / "src"
    d.mkdir(exist_ok=True)
    names = []
    for i in range(n):
        name = f"{i:03d}.{'png' if i % 2 == 0 else 'jpg'}"
        arr = np.full((size[1], size[0], 3), _colour(i), np.uint8)
        if bad and i in bad:
            (d / name).write_bytes(bad[i])
        elif name.endswith("png"):
            Image.fromarray(arr).save(d / name)
        else:
            (d / name).write_bytes(_jpeg_bytes(arr))
        names.append(name)
    idx = np.arange(n)
    labels = np.stack([(idx >> b) & 1 for b in range(4)], axis=1).astype(np.uint8)
    return LabelledImages(
        root=tmp_path,
        layout=layout,
        image_dir=d,
        filenames=names,
        attr_names=["b0", "b1", "b2", "b3"],
        labels=labels,
        partition=(idx % 3).astype(np.int8) if partition else None,
        identity=(1000 + idx).astype(np.int32),
    )


def _truncated_jpeg():
    rng = np.random.default_rng(0)
    data = _jpeg_bytes(rng.integers(0, 255, (50, 40, 3), np.uint8), quality=90)
    return data[: len(data) // 2]


def test_round_trip_every_row_keeps_its_own_image_labels_and_metadata(tmp_path):
    src = _source(tmp_path, n=12)
    c = prepare(src, tmp_path / "cache", image_size=16, workers=2, progress=False)
    assert len(c) == 12
    assert c.images.shape == (12, 3, 16, 16) and c.images.dtype == np.uint8
    for j in range(len(c)):
        i = _index_of(c.images[j])
        assert c.filenames[j] == src.filenames[i]
        np.testing.assert_array_equal(c.labels[j], src.labels[i])
        assert c.partition[j] == src.partition[i] and c.identity[j] == src.identity[i]
        # PNG rows are exact; JPEG rows within compression error.
        tol = 0 if i % 2 == 0 else 3
        assert np.abs(c.images[j].astype(int) - np.array(_colour(i))[:, None, None]).max() <= tol
    assert c.attr_names == src.attr_names
    assert c.meta["count"] == 12 and c.meta["image_size"] == 16 and c.meta["skipped"] == []
    assert c.meta["partition_source"].startswith("source")
    # The arrays are plain .npy files the contract promises.
    assert np.load(tmp_path / "cache" / "images.npy", mmap_mode="r").shape == (12, 3, 16, 16)
    assert is_cache(tmp_path / "cache")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "src"]  # no staging left


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_crop_resize_geometry_and_landmarks_land_on_the_features(tmp_path, fmt):
    # A CelebA-sized image with five dark squares; the landmarks (1-based, as CelebA's files)
    # sit at their centres. After crop 148 + resize to 64, each landmark must sit on the centre
    # of darkness of its square in the cache image.
    w, h = 178, 218
    centres0 = [(70.5, 111.5), (107.5, 112.5), (89.5, 135.5), (75.5, 153.5), (103.5, 160.5)]
    arr = np.full((h, w, 3), 255, np.uint8)
    for cx, cy in centres0:  # 0-based pixel-centre coordinates of a 10 x 10 square
        x0, y0 = int(cx - 4.5), int(cy - 4.5)
        arr[y0 : y0 + 10, x0 : x0 + 10] = 0
    d = tmp_path / "img"
    d.mkdir()
    if fmt == "PNG":
        Image.fromarray(arr).save(d / "000001.png")
        name = "000001.png"
    else:
        (d / "000001.jpg").write_bytes(_jpeg_bytes(arr, quality=98))
        name = "000001.jpg"
    lm = np.array([[(x + 1, y + 1) for x, y in centres0]], np.float32)
    src = LabelledImages(
        root=tmp_path,
        layout="celeba-official",
        image_dir=d,
        filenames=[name],
        attr_names=["A"],
        labels=np.zeros((1, 1), np.uint8),
        landmarks=lm,
    )
    c = prepare(src, tmp_path / "cache", image_size=64, workers=1, progress=False)
    assert c.meta["crop"] == 148  # CelebA default
    assert "0-based pixel centres" in c.meta["landmarks"]
    dark = 255.0 - c.images[0].astype(np.float64).mean(axis=0)
    yy, xx = np.mgrid[0:64, 0:64]
    for k, (cx, cy) in enumerate(centres0):
        expected = ((cx + 0.5 - 15) * 64 / 148 - 0.5, (cy + 0.5 - 35) * 64 / 148 - 0.5)
        np.testing.assert_allclose(c.landmarks[0, k], expected, atol=1e-4)
        win = (np.abs(xx - expected[0]) <= 4) & (np.abs(yy - expected[1]) <= 4)
        wts = dark * win
        centroid = ((wts * xx).sum() / wts.sum(), (wts * yy).sum() / wts.sum())
        np.testing.assert_allclose(centroid, c.landmarks[0, k], atol=0.3)


def test_unreadable_files_are_skipped_named_and_do_not_shift_other_rows(tmp_path, capsys):
    bad = {3: b"this is not an image at all", 5: b"", 8: _truncated_jpeg()}
    src = _source(tmp_path, n=12, bad=bad)
    c = prepare(src, tmp_path / "cache", image_size=16, workers=1, progress=False)
    assert len(c) == 9
    skipped = {s["file"]: s["reason"] for s in c.meta["skipped"]}
    assert set(skipped) == {"003.jpg", "005.jpg", "008.png"}
    assert "not an image" in skipped["003.jpg"]
    assert "empty" in skipped["005.jpg"]
    assert "truncated" in skipped["008.png"]
    assert c.skipped == c.meta["skipped"]
    err = capsys.readouterr().err
    assert "skipped 3 unreadable" in err
    assert all(f in err for f in skipped)
    kept = [i for i in range(12) if i not in bad]
    assert c.filenames == [src.filenames[i] for i in kept]
    for j, i in enumerate(kept):
        assert _index_of(c.images[j]) == i
        np.testing.assert_array_equal(c.labels[j], src.labels[i])
        assert c.identity[j] == 1000 + i and c.partition[j] == i % 3


def test_every_image_unreadable_is_a_data_error(tmp_path):
    src = _source(tmp_path, n=3, bad={0: b"", 1: b"x", 2: b"y"})
    with pytest.raises(DataError, match="none of the 3 images"):
        prepare(src, tmp_path / "cache", image_size=16, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_bad_parameters_are_refused_with_the_file_and_sizes(tmp_path):
    src = _source(tmp_path, n=2)
    with pytest.raises(DataError, match="at least 8"):
        prepare(src, tmp_path / "cache", image_size=4, progress=False)
    with pytest.raises(DataError, match=r"crop 60 is larger than image .*000\.png \(40 x 50\)"):
        prepare(src, tmp_path / "cache", image_size=16, crop=60, progress=False)
    assert not (tmp_path / "cache").exists()


def test_non_empty_output_is_refused_and_force_replaces_it(tmp_path):
    src = _source(tmp_path, n=4)
    out = tmp_path / "cache"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match="not empty.*--force"):
        prepare(src, out, image_size=16, workers=1, progress=False)
    assert (out / "precious.txt").read_text() == "keep me"
    c = prepare(src, out, image_size=16, workers=1, force=True, progress=False)
    assert len(c) == 4 and not (out / "precious.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "src"]


def test_disk_full_midway_leaves_no_complete_looking_cache_and_says_so(tmp_path, monkeypatch):
    src = _source(tmp_path, n=12)
    out = tmp_path / "cache"
    real_pwrite = os.pwrite
    calls = {"n": 0}

    def full_disk(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 5:  # the header, then four chunks of rows
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", full_disk)
    with pytest.raises(OutputError, match=r"disk full \(or write error\).*free space"):
        prepare(src, out, image_size=16, workers=1, progress=False)
    assert not out.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == [".cache.partial", "src"]  # only the resumable work
    partial = tmp_path / ".cache.partial"
    assert not is_cache(partial)
    with pytest.raises(DataError, match="unfinished prepare"):
        open_cache(partial)
    monkeypatch.setattr(os, "pwrite", real_pwrite)
    c = prepare(src, out, image_size=16, workers=1, progress=False)
    assert c.meta["resumed"] and len(c) == 12
    assert [_index_of(c.images[j]) for j in range(12)] == list(range(12))


def test_interrupted_then_resumed_is_byte_identical_to_uninterrupted(tmp_path, monkeypatch, capsys):
    src = _source(tmp_path, n=14, bad={6: _truncated_jpeg()})  # also resumes across a skip
    ref = prepare(src, tmp_path / "ref", image_size=16, workers=1, progress=False)
    real = cache_mod._decode_chunk
    decoded = []

    def interrupt_at_chunk_5(task):
        if task[0] == 5:
            raise KeyboardInterrupt
        decoded.append(task[0])
        return real(task)

    monkeypatch.setattr(cache_mod, "_decode_chunk", interrupt_at_chunk_5)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "cache", image_size=16, workers=1, progress=False)
    assert not (tmp_path / "cache").exists()
    assert decoded == [0, 1, 2, 3, 4]
    decoded.clear()
    monkeypatch.setattr(
        cache_mod, "_decode_chunk", lambda task: decoded.append(task[0]) or real(task)
    )
    capsys.readouterr()
    c = prepare(src, tmp_path / "cache", image_size=16, workers=1, progress=False)
    assert "resuming" in capsys.readouterr().err
    assert decoded == list(range(5, 14))  # the finished chunks were not decoded again
    assert (tmp_path / "cache" / "images.npy").read_bytes() == (
        tmp_path / "ref" / "images.npy"
    ).read_bytes()
    np.testing.assert_array_equal(c.labels, ref.labels)
    assert c.filenames == ref.filenames and c.skipped == ref.skipped
    assert not (tmp_path / ".cache.partial").exists()


def test_changed_parameters_discard_the_unfinished_work(tmp_path, monkeypatch, capsys):
    src = _source(tmp_path, n=8)
    real = cache_mod._decode_chunk

    def interrupt(task):
        if task[0] == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(cache_mod, "_decode_chunk", interrupt)
    with pytest.raises(KeyboardInterrupt):
        prepare(src, tmp_path / "cache", image_size=16, workers=1, progress=False)
    monkeypatch.setattr(cache_mod, "_decode_chunk", real)
    capsys.readouterr()
    c = prepare(src, tmp_path / "cache", image_size=8, workers=1, progress=False)
    assert "discarding" in capsys.readouterr().err
    assert c.images.shape == (8, 3, 8, 8)
    assert [_index_of(c.images[j]) for j in range(8)] == list(range(8))


def test_open_cache_refuses_incomplete_or_inconsistent_folders(tmp_path):
    good = prepare(_source(tmp_path, n=4), tmp_path / "good", image_size=8, progress=False).path

    def broken(name):
        p = tmp_path / name
        shutil.copytree(good, p)
        return p

    p = broken("no_meta")
    (p / "meta.json").unlink()
    assert not is_cache(p)
    with pytest.raises(DataError, match="meta.json is missing"):
        open_cache(p)
    p = broken("no_labels")
    (p / "labels.npy").unlink()
    with pytest.raises(DataError, match="labels.npy missing"):
        open_cache(p)
    p = broken("short_images")
    with open(p / "images.npy", "r+b") as f:
        f.truncate(200)
    with pytest.raises(DataError, match="images.npy"):
        open_cache(p)
    p = broken("wrong_count")
    meta = json.loads((p / "meta.json").read_text())
    meta["count"] = 5
    (p / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="inconsistent"):
        open_cache(p)
    with pytest.raises(DataError, match="not found"):
        open_cache(tmp_path / "nowhere")


def test_batch_returns_float_rows_in_the_asked_order(tmp_path):
    c = prepare(_source(tmp_path, n=10), tmp_path / "cache", image_size=8, progress=False)
    idx = [7, 2, 2, 9, 0]
    x = c.batch(idx)
    assert x.dtype == torch.float32 and x.shape == (5, 3, 8, 8)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    np.testing.assert_allclose(x.numpy(), c.images[idx] / 255.0, atol=1e-7)
    c.load_into_memory()
    assert not isinstance(c.images, np.memmap)
    np.testing.assert_array_equal(c.batch(np.array(idx)).numpy(), x.numpy())


def test_batch_loader_covers_each_train_row_once_per_epoch_reproducibly(tmp_path):
    c = prepare(_source(tmp_path, n=20), tmp_path / "cache", image_size=8, progress=False)
    train = c.split("train")
    assert set(train.tolist()) == set(np.flatnonzero(c.partition == 0).tolist())

    def epoch_rows(loader):
        rows = []
        for x, y in loader:
            assert x.dtype == torch.float32 and y.dtype == torch.uint8
            for k in range(len(x)):
                j = int(
                    np.flatnonzero((c.images == (x[k].numpy() * 255).round()).all((1, 2, 3)))[0]
                )
                np.testing.assert_array_equal(y[k].numpy(), c.labels[j])
                rows.append(j)
        return rows

    loader = BatchLoader(c, "train", batch_size=3, seed=1)
    assert len(loader) == -(-len(train) // 3)
    e0, e1 = epoch_rows(loader), epoch_rows(loader)
    assert sorted(e0) == sorted(e1) == train.tolist()
    assert e0 != e1
    again = BatchLoader(c, "train", batch_size=3, seed=1)
    assert epoch_rows(again) == e0
    again.set_epoch(1)
    assert epoch_rows(again) == e1
    assert len(BatchLoader(c, "train", batch_size=3, drop_last=True)) == len(train) // 3


def test_partition_without_one_in_the_source_is_a_stable_hash(tmp_path):
    src = _source(tmp_path, n=12, partition=False)
    src.identity = np.repeat(np.arange(6), 2).astype(np.int32)
    c = prepare(src, tmp_path / "cache", image_size=8, progress=False)
    assert c.meta["partition_source"].startswith("hash of identity")
    # Both images of a person fall in the same split.
    np.testing.assert_array_equal(c.partition[0::2], c.partition[1::2])
    parts = cache_mod._hash_partition([f"file:{i}.jpg" for i in range(5000)])
    np.testing.assert_array_equal(
        parts, cache_mod._hash_partition([f"file:{i}.jpg" for i in range(5000)])
    )
    np.testing.assert_allclose(np.bincount(parts, minlength=3) / 5000, [0.8, 0.1, 0.1], atol=0.02)


def test_any_image_mode_becomes_rgb_with_transparency_on_white(tmp_path):
    d = tmp_path / "src"
    d.mkdir()
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[..., 0] = 255  # red, but fully transparent
    Image.fromarray(rgba, "RGBA").save(d / "a.png")
    Image.fromarray(np.full((20, 20), 100, np.uint8), "L").save(d / "b.png")
    Image.fromarray(np.full((20, 20), 100 * 257, np.uint16)).save(d / "c.png")  # 16-bit grey
    Image.new("RGB", (20, 20), (0, 0, 255)).convert("P").save(d / "d.gif")
    Image.new("CMYK", (20, 20), (0, 0, 0, 0)).save(d / "e.jpg")
    names = ["a.png", "b.png", "c.png", "d.gif", "e.jpg"]
    src = LabelledImages(
        root=tmp_path, layout="folder-csv", image_dir=d, filenames=names,
        attr_names=["A"], labels=np.zeros((5, 1), np.uint8),
    )  # fmt: skip
    c = prepare(src, tmp_path / "cache", image_size=8, progress=False)
    assert c.skipped == []
    px = c.images[:, :, 4, 4].astype(int)
    np.testing.assert_array_equal(px[0], [255, 255, 255])
    np.testing.assert_array_equal(px[1], [100, 100, 100])
    np.testing.assert_array_equal(px[2], [100, 100, 100])
    np.testing.assert_array_equal(px[3], [0, 0, 255])
    assert (np.abs(px[4] - 255) <= 2).all()


def test_exif_orientation_is_applied_for_folders_but_not_for_celeba(tmp_path):
    from PIL import ImageOps

    d = tmp_path / "src"
    d.mkdir()
    yy, xx = np.mgrid[0:30, 0:47]  # odd margin: a wrong flip of the box shows
    arr = np.stack([xx * 5, yy * 8, (xx * yy) % 256], -1).astype(np.uint8)
    names = []
    for o in (3, 6, 8):
        im = Image.fromarray(arr)
        exif = im.getexif()
        exif[0x0112] = o
        im.save(d / f"o{o}.png", exif=exif.tobytes())
        names.append(f"o{o}.png")

    def source(layout):
        return LabelledImages(
            root=tmp_path, layout=layout, image_dir=d, filenames=names,
            attr_names=["A"], labels=np.zeros((3, 1), np.uint8),
        )  # fmt: skip

    c = prepare(source("folder-csv"), tmp_path / "folder", image_size=10, crop=30, progress=False)
    for j, name in enumerate(names):
        up = ImageOps.exif_transpose(Image.open(d / name).convert("RGB"))
        left, top = (up.width - 30) // 2, (up.height - 30) // 2
        ref = up.resize((10, 10), Image.BOX, box=(left, top, left + 30, top + 30))
        diff = np.abs(c.images[j].astype(int) - np.asarray(ref).transpose(2, 0, 1))
        assert diff.max() <= 1, name
    raw = prepare(source("celeba-official"), tmp_path / "celeba", 10, crop=30, progress=False)
    ref = Image.fromarray(arr).resize(
        (10, 10), Image.BOX, box=(8, 0, 38, 30)
    )  # stored frame, unrotated
    np.testing.assert_array_equal(raw.images[1], np.asarray(ref).transpose(2, 0, 1))


# ------------------------------------------------------------------------------------------------
# open_or_prepare: a cache is reused only for the data it was made from


def _csv_folder(root, n, attrs, seed, labels_csv=None):
    """n flat-colour PNGs in ``root`` and their labels (seeded) in ``labels_csv`` (default
    ``root/labels.csv``); returns the labels array written."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, (n, len(attrs))).astype(np.uint8)
    labels[0], labels[1] = 0, 1  # every attribute has both values
    rows = [",".join(["filename", *attrs])]
    for i in range(n):
        Image.fromarray(np.full((24, 20, 3), _colour(i + seed), np.uint8)).save(root / f"{i}.png")
        rows.append(",".join([f"{i}.png", *map(str, labels[i])]))
    (labels_csv or root / "labels.csv").write_text("\n".join(rows) + "\n")
    return labels


@pytest.fixture
def spy_prepare(monkeypatch):
    """Count the calls of cache.prepare that open_or_prepare makes."""
    calls = []
    real = cache_mod.prepare

    def spy(source, out, *a, **k):
        calls.append(Path(out))
        return real(source, out, *a, **k)

    monkeypatch.setattr(cache_mod, "prepare", spy)
    return calls


def _open(data, cache_dir, labels=None, size=16):
    return cache_mod.open_or_prepare(
        str(data), cache_dir, size, labels=labels, workers=1, progress=False
    )


def test_a_cache_of_other_data_is_not_reused_but_kept_and_found_again(
    tmp_path, spy_prepare, capsys
):
    # `conceptvae train A -o runs/x` then `conceptvae vectors runs/x B --labels B/mine.csv`:
    # both use runs/x-cache
    a_labels = _csv_folder(tmp_path / "A", 9, ["Bright", "Red"], seed=0)
    b_csv = tmp_path / "B" / "mine.csv"
    b_labels = _csv_folder(tmp_path / "B", 7, ["Smiling"], seed=50, labels_csv=b_csv)
    cache_dir = tmp_path / "runs" / "x-cache"
    a = _open(tmp_path / "A", cache_dir)
    assert a.path == cache_dir and a.attr_names == ["Bright", "Red"]
    a_meta = (cache_dir / "meta.json").read_bytes()
    a_stamp = (cache_dir / "meta.json").stat().st_mtime_ns

    b = _open(tmp_path / "B", cache_dir, labels=b_csv)
    assert b.attr_names == ["Smiling"] and len(b) == 7
    order = [int(f.split(".")[0]) for f in b.filenames]
    np.testing.assert_array_equal(b.labels, b_labels[order])
    assert b.path.parent == cache_dir.parent and b.path.name.startswith("x-cache-")
    err = capsys.readouterr().err
    assert f"{cache_dir} holds a cache of other data" in err
    assert "source folder" in err and "labels" in err and str(b.path) in err
    # A's cache is untouched
    assert (cache_dir / "meta.json").read_bytes() == a_meta
    assert (cache_dir / "meta.json").stat().st_mtime_ns == a_stamp
    assert len(spy_prepare) == 2

    # asking again for either finds its own cache without preparing anything
    again_a = _open(tmp_path / "A", cache_dir)
    assert again_a.path == cache_dir
    np.testing.assert_array_equal(again_a.labels, a_labels[[int(f[0]) for f in a.filenames]])
    assert _open(tmp_path / "B", cache_dir, labels=b_csv).path == b.path
    assert len(spy_prepare) == 2
    assert (cache_dir / "meta.json").stat().st_mtime_ns == a_stamp
    assert sorted(p.name for p in cache_dir.parent.iterdir()) == ["x-cache", b.path.name]


def test_the_same_images_with_changed_labels_or_size_are_prepared_beside(tmp_path, spy_prepare):
    _csv_folder(tmp_path / "A", 9, ["Bright", "Red"], seed=0)
    cache_dir = tmp_path / "c"
    first = _open(tmp_path / "A", cache_dir)
    # one label flipped in labels.csv: a new cache with the new value
    csv_path = tmp_path / "A" / "labels.csv"
    lines = csv_path.read_text().splitlines()
    name, bright, red = lines[3].split(",")
    lines[3] = ",".join([name, str(1 - int(bright)), red])
    csv_path.write_text("\n".join(lines) + "\n")
    relabelled = _open(tmp_path / "A", cache_dir)
    assert relabelled.path != cache_dir
    row = relabelled.filenames.index(name)
    assert relabelled.labels[row, 0] == 1 - int(bright)
    assert first.labels[first.filenames.index(name), 0] == int(bright)  # the old one is kept
    # another image size: beside too, with its own name
    bigger = _open(tmp_path / "A", cache_dir, size=24)
    assert bigger.image_size == 24 and bigger.path not in (cache_dir, relabelled.path)
    assert open_cache(cache_dir).image_size == 16
    assert len(spy_prepare) == 3
    # each is found again
    assert _open(tmp_path / "A", cache_dir).path == relabelled.path
    assert _open(tmp_path / "A", cache_dir, size=24).path == bigger.path
    assert len(spy_prepare) == 3


def test_a_cache_made_before_prepare_params_counts_as_other_data(tmp_path, spy_prepare, capsys):
    _csv_folder(tmp_path / "A", 9, ["Bright", "Red"], seed=0)
    cache_dir = tmp_path / "c"
    _open(tmp_path / "A", cache_dir)
    meta = json.loads((cache_dir / "meta.json").read_text())
    for key in ("prepare_params", "made_from"):
        del meta[key]
    (cache_dir / "meta.json").write_text(json.dumps(meta))
    c = _open(tmp_path / "A", cache_dir)
    assert c.path != cache_dir and len(spy_prepare) == 2
    assert "file sizes or times, partition or landmarks differ" in capsys.readouterr().err
    assert json.loads((cache_dir / "meta.json").read_text()) == meta  # kept as it was


def test_made_from_records_the_source_and_hashes_of_names_and_labels(tmp_path):
    labels = _csv_folder(tmp_path / "A", 9, ["Bright", "Red"], seed=0)
    c = _open(tmp_path / "A", tmp_path / "c")
    made = c.meta["made_from"]
    assert made["image_dir"] == str(tmp_path / "A") and made["files"] == 9
    assert (made["image_size"], made["crop"]) == (16, None)
    record = open_dataset(tmp_path / "A")
    np.testing.assert_array_equal(record.labels, labels)
    arrays = cache_mod._source_arrays(record)
    params = cache_mod._prepare_params(record, arrays, 16, None)
    assert params == c.meta["prepare_params"]
    assert cache_mod._made_from(record, arrays, params) == made
    arrays["labels"][4, 1] ^= 1  # one label value: another hash
    assert cache_mod._made_from(record, arrays, params)["labels_sha256"] != made["labels_sha256"]


def test_reuse_only_refuses_to_prepare(tmp_path, spy_prepare):
    _csv_folder(tmp_path / "A", 9, ["Bright", "Red"], seed=0)
    with pytest.raises(DataError, match=r"no cache of .*A in .*c or .*c-[0-9a-f]{8}: prepare"):
        cache_mod.open_or_prepare(str(tmp_path / "A"), tmp_path / "c", 16, reuse_only=True)
    assert spy_prepare == []


def test_cli_vectors_after_train_fits_the_users_labels_not_the_training_datas(tmp_path):
    from click.testing import CliRunner

    from conceptvae.cli import cli
    from conceptvae.vectors import load_bank

    def folder(root, attr, n, seed, csv_name="labels.csv"):
        root.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        rows = [f"filename,partition,{attr}"]
        for i in range(n):
            arr = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8) + np.uint8(120 * (i % 2))
            Image.fromarray(arr).save(root / f"{i:03d}.png")
            rows.append(f"{i:03d}.png,{0 if i < n * 3 // 4 else 1},{i % 2}")
        (root / csv_name).write_text("\n".join(rows) + "\n")

    folder(tmp_path / "celeba", "Bright", 16, seed=0)
    folder(tmp_path / "faces", "Smiling", 16, seed=1, csv_name="mine.csv")
    run_dir = tmp_path / "runs" / "x"
    tiny = ["--image-size", "64", "--latent-dim", "8", "--patch-size", "16", "--channels", "8"]
    r = CliRunner().invoke(
        cli,
        ["train", str(tmp_path / "celeba"), "-o", str(run_dir), *tiny, "--epochs", "1",
         "--batch-size", "4", "--device", "cpu", "--no-probe", "--workers", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        cli,
        ["vectors", str(run_dir), str(tmp_path / "faces"), "--labels",
         str(tmp_path / "faces" / "mine.csv"), "--device", "cpu", "--workers", "1"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert load_bank(run_dir).names == ["Smiling"]
    assert open_cache(tmp_path / "runs" / "x-cache").attr_names == ["Bright"]  # kept
    (beside,) = [p for p in (tmp_path / "runs").iterdir() if p.name.startswith("x-cache-")]
    assert open_cache(beside).attr_names == ["Smiling"]

"""SynthFaces: CelebA's exact file format, determinism, identities, correlations, and renders
that really show their labels."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image

from conceptvae.data import ALIGNED_TEMPLATE, CELEBA_ATTRIBUTES, LANDMARK_NAMES, synth
from conceptvae.data.synth import (
    RENDERED_ATTRIBUTES,
    render_face,
    sample_params,
    synth_labels,
    with_attribute,
    write_synthfaces,
)
from conceptvae.errors import OutputError

N, SEED = 30, 3
IDX = {a: i for i, a in enumerate(CELEBA_ATTRIBUTES)}
TEXT_FILES = (
    "list_attr_celeba.txt",
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_landmarks_align_celeba.txt",
    "list_bbox_celeba.txt",
)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "faces"
    summary = write_synthfaces(out, n=N, seed=SEED, workers=1, progress=False)
    return out, summary


def _lines(path) -> list[str]:
    data = path.read_bytes()
    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b""), f"{path.name}: a line ends without CRLF"
    return data.decode("ascii").split("\r\n")[:-1]


def _find(pred, n=400, seed=0):
    """The first params of the (seed, n) set that satisfy ``pred``."""
    for i in range(n):
        p = sample_params(seed, i, n)
        if pred(p.attrs) and not p.attrs["Blurry"]:
            return p
    raise AssertionError("no such face in the set")


def test_text_files_are_celeba_format_byte_for_byte(written):
    out, summary = written
    assert (summary["n"], summary["seed"], summary["workers"]) == (N, SEED, 1)
    assert summary["out"] == str(out)
    assert summary["images_per_s"] == pytest.approx(N / summary["seconds"])  # the summary adds up
    names = [f"{i:06d}.jpg" for i in range(1, N + 1)]

    attr = _lines(out / "list_attr_celeba.txt")
    assert attr[0] == str(N)
    assert attr[1] == " ".join(CELEBA_ATTRIBUTES) + " "  # single spaces, trailing space
    assert len(attr) == N + 2
    for name, row in zip(names, attr[2:]):
        values = [int(v) for v in row.split()[1:]]
        assert row == f"{name} {values[0]}" + "".join(f" {v:2d}" for v in values[1:])
        assert len(values) == 40 and set(values) <= {-1, 1}
    assert re.fullmatch(r"\d{6}\.jpg (-1|1)(  1| -1){39}", attr[2])

    lm = _lines(out / "list_landmarks_align_celeba.txt")
    assert lm[0] == str(N)
    header = " ".join(f"{p}_{c}" for p in LANDMARK_NAMES for c in ("x", "y")) + " "
    assert lm[1] == header
    for name, row in zip(names, lm[2:]):
        assert row.startswith(name) and len(row) == len(name) + 50
        assert re.fullmatch(r"( {0,4}\d{1,5}){10}", row[len(name) :])
        assert all(len(row[len(name) + 5 * k : len(name) + 5 * k + 5]) == 5 for k in range(10))

    bbox = _lines(out / "list_bbox_celeba.txt")
    assert bbox[:2] == [str(N), "image_id x_1 y_1 width height "]
    for name, row in zip(names, bbox[2:]):
        assert row.startswith(name) and len(row) == len(name) + 20
        x, y, w, h = (int(v) for v in row.split()[1:])
        assert x > 0 and y > 0 and x + w <= 178 + 5 and y + h <= 218 + 5 and w > 50 and h > 80

    for fname in ("list_eval_partition.txt", "identity_CelebA.txt"):
        rows = _lines(out / fname)
        assert len(rows) == N  # no header
        for name, row in zip(names, rows):
            assert re.fullmatch(re.escape(name) + r" \d+", row)

    images = sorted(p.name for p in (out / "img_align_celeba").iterdir())
    assert images == names
    with Image.open(out / "img_align_celeba" / names[0]) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (178, 218)
    assert (out / "README.md").read_text().startswith(f"# SynthFaces (seed {SEED}, n {N})")


def test_written_labels_equal_synth_labels_and_unrendered_are_negative(written):
    out, _ = written
    rows = _lines(out / "list_attr_celeba.txt")[2:]
    labels = np.array([[int(v) for v in r.split()[1:]] for r in rows], np.int8)
    np.testing.assert_array_equal(labels, synth_labels(SEED, N))
    big = synth_labels(0, 3000)
    for a in CELEBA_ATTRIBUTES:
        if a not in RENDERED_ATTRIBUTES:
            assert (big[:, IDX[a]] == -1).all(), a
        else:
            assert (big[:, IDX[a]] == 1).any(), f"{a} is never drawn"


def test_same_seed_same_bytes_whatever_the_worker_count(written, tmp_path):
    out, _ = written
    again = tmp_path / "again"
    write_synthfaces(again, n=N, seed=SEED, workers=2, progress=False)
    for f in TEXT_FILES + ("README.md",):
        assert (again / f).read_bytes() == (out / f).read_bytes(), f
    for img in (out / "img_align_celeba").iterdir():
        assert (again / "img_align_celeba" / img.name).read_bytes() == img.read_bytes()


def test_different_seed_different_faces_and_sampling_is_order_free():
    assert not np.array_equal(synth_labels(SEED, N), synth_labels(SEED + 1, N))
    a, _ = render_face(sample_params(SEED, 0, N))
    b, _ = render_face(sample_params(SEED + 1, 0, N))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 10
    late = sample_params(7, 150, 200)
    synth._layout.cache_clear()
    synth._identity.cache_clear()
    for i in range(3):
        sample_params(7, i, 200)
    assert sample_params(7, 150, 200) == late
    assert np.array_equal(render_face(late)[0], render_face(late)[0])


def test_identity_traits_constant_and_partition_identity_disjoint():
    n = 2000
    params = [sample_params(0, i, n) for i in range(n)]
    ident = np.array([p.identity for p in params])
    part = np.array([p.partition for p in params])
    fixed = ("Male", "Young", "Pale_Skin", *synth.HAIR_COLOURS, "Bangs", "No_Beard")
    by_person: dict[int, set] = {}
    for p in params:
        key = tuple(p.attrs[a] for a in fixed) + (p.partition, p.skin, p.hair_style)
        by_person.setdefault(p.identity, set()).add(key)
    assert all(len(v) == 1 for v in by_person.values())
    sizes = np.bincount(ident)[1:]
    assert sizes[:-1].min() >= 5 and sizes.max() <= 30 and 15 <= sizes.mean() <= 25
    frac = np.bincount(part, minlength=3) / n
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.02)
    assert (np.diff(part) >= 0).all()  # CelebA's order: train, then valid, then test
    hair = synth_labels(0, n)[:, [IDX[h] for h in synth.HAIR_COLOURS]]
    assert ((hair > 0).sum(1) <= 1).all()  # at most one hair colour


def test_label_rates_and_correlations_like_celeba():
    lab = synth_labels(0, 20000) > 0

    def col(a):
        return lab[:, IDX[a]]

    male, young = col("Male"), col("Young")
    for a, lo, hi in [("Male", 0.36, 0.48), ("Smiling", 0.42, 0.54), ("Young", 0.72, 0.82),
                      ("Mouth_Slightly_Open", 0.42, 0.54), ("Wearing_Lipstick", 0.40, 0.54),
                      ("No_Beard", 0.78, 0.88), ("Eyeglasses", 0.05, 0.13), ("Bangs", 0.1, 0.2),
                      ("Bald", 0.01, 0.04), ("Wearing_Hat", 0.03, 0.08),
                      ("Pale_Skin", 0.02, 0.07), ("Gray_Hair", 0.02, 0.07)]:  # fmt: skip
        assert lo < col(a).mean() < hi, (a, col(a).mean())
    assert col("Wearing_Lipstick")[male].mean() < 0.05
    assert np.corrcoef(col("Gray_Hair"), young)[0, 1] < -0.2
    assert col("Bald")[~young].mean() > 4 * col("Bald")[young].mean()
    assert col("Smiling")[~male].mean() > col("Smiling")[male].mean() + 0.08
    smiling = col("Smiling")
    assert col("Mouth_Slightly_Open")[smiling].mean() > col("Mouth_Slightly_Open")[~smiling].mean()
    for a in ("Goatee", "Mustache", "5_o_Clock_Shadow", "Sideburns", "Bald"):
        assert not col(a)[~male].any(), a
    assert col("No_Beard")[~male].all()
    assert not (col("Heavy_Makeup") & ~col("Wearing_Lipstick")).any()
    assert col("Blond_Hair")[~male].mean() > 2 * col("Blond_Hair")[male].mean()


def test_landmark_file_is_what_was_drawn_and_near_the_template(written):
    out, _ = written
    rows = _lines(out / "list_landmarks_align_celeba.txt")[2:]
    written_marks = np.array([[int(v) for v in r.split()[1:]] for r in rows]).reshape(N, 5, 2)
    drawn = np.stack([render_face(sample_params(SEED, i, N))[1] for i in range(N)])
    np.testing.assert_array_equal(written_marks, np.rint(drawn))
    eyes = np.array([ALIGNED_TEMPLATE["lefteye"], ALIGNED_TEMPLATE["righteye"]])
    assert np.abs(drawn[:, :2] - eyes).max() < 8
    mouth_mid = drawn[:, 3:].mean(1)
    assert np.abs(mouth_mid - ALIGNED_TEMPLATE["mouth"]).max() < 10
    assert (drawn[:, 0, 0] < drawn[:, 2, 0]).all() and (drawn[:, 2, 0] < drawn[:, 1, 0]).all()
    assert (drawn[:, 2, 1] > drawn[:, 0, 1]).all() and (drawn[:, 3, 1] > drawn[:, 2, 1]).all()


def _pair(p, name):
    off, _ = render_face(with_attribute(p, name, False))
    on, marks = render_face(with_attribute(p, name, True))
    return off.astype(np.float32), on.astype(np.float32), marks


def _box(marks, pts, dx, dy):
    """A (y0, y1, x0, x1) box around the given landmarks (0-based pixel indices)."""
    xy = marks[pts] - 1
    x0, y0 = xy.min(0) - (dx, dy)
    x1, y1 = xy.max(0) + (dx, dy)
    return slice(int(max(y0, 0)), int(y1) + 1), slice(int(max(x0, 0)), int(x1) + 1)


def test_eyeglasses_change_the_eyes_only():
    p = _find(lambda a: not a["Eyeglasses"] and not a["Wearing_Hat"])
    off, on, marks = _pair(p, "Eyeglasses")
    diff = np.abs(on - off).max(2)
    around_eyes = _box(marks, [0, 1], 16, 12)
    assert diff[around_eyes].mean() > 12
    assert (diff[around_eyes] > 40).mean() > 0.1  # frames and tinted lenses
    assert diff[int(marks[3:, 1].max()) + 6 :].max() <= 3  # mouth, chin and below untouched


def test_lipstick_reddens_the_mouth():
    p = _find(lambda a: not a["Wearing_Lipstick"] and not a["Male"])
    off, on, marks = _pair(p, "Wearing_Lipstick")
    mouth = _box(marks, [3, 4], -3, 3)

    def red(img):
        px = img[mouth]
        return (px[..., 0] - px[..., 1:].mean(-1)).mean()

    assert red(on) > red(off) + 15
    assert np.abs(on - off)[: int(marks[2, 1])].max() <= 3  # nothing above the nose tip


def test_smiling_changes_the_mouth_and_widens_it():
    p = _find(lambda a: not a["Smiling"] and not a["Mouth_Slightly_Open"] and a["No_Beard"])
    off, on, marks = _pair(p, "Smiling")
    _, marks_off = render_face(with_attribute(p, "Smiling", False))
    width = lambda m: np.linalg.norm(m[4] - m[3])  # noqa: E731
    assert width(marks) > width(marks_off) + 2
    mouth = _box(marks, [3, 4], 4, 6)
    assert np.abs(on - off)[mouth].max(2).mean() > 8
    assert np.abs(on - off)[: int(marks[0, 1]) - 30].max() <= 3  # forehead and hair untouched


def test_open_mouth_shows_a_dark_gap():
    p = _find(lambda a: not (a["Smiling"] or a["Mouth_Slightly_Open"] or a["Wearing_Lipstick"]))
    off, on, marks = _pair(p, "Mouth_Slightly_Open")
    mx, my = marks[3:].mean(0) - 1
    centre = slice(int(my) - 1, int(my) + 5), slice(int(mx) - 6, int(mx) + 7)
    assert on[centre].mean() < off[centre].mean() - 20
    dark = lambda img: (img.mean(2) < 60).sum()  # noqa: E731
    assert dark(on) > dark(off) + 40


def test_hair_colour_and_pale_skin_change_brightness_the_right_way():
    p = _find(lambda a: not a["Bald"] and not a["Wearing_Hat"] and not a["Bangs"])
    black, _ = render_face(with_attribute(p, "Black_Hair", True))
    blond, marks = render_face(with_attribute(p, "Blond_Hair", True))
    top = slice(int(marks[:2, 1].min()) - 62, int(marks[:2, 1].min()) - 45)
    middle = slice(int(marks[0, 0]), int(marks[1, 0]))
    assert blond[top, middle].mean() > black[top, middle].mean() + 60
    assert with_attribute(p, "Blond_Hair", True).labels[IDX["Black_Hair"]] == -1

    q = _find(lambda a: not a["Pale_Skin"] and not a["Wearing_Hat"])
    off, on, marks = _pair(q, "Pale_Skin")
    cheek = _box(marks, [0], 3, 3)
    cheek = (slice(cheek[0].start + 16, cheek[0].stop + 16), cheek[1])
    assert on[cheek].mean() > off[cheek].mean() + 10


def test_existing_output_folder_is_refused_unless_force(tmp_path):
    out = tmp_path / "faces"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match=re.escape(str(out))):
        write_synthfaces(out, n=3, progress=False)
    assert (out / "keep.txt").read_text() == "mine"
    write_synthfaces(out, n=3, progress=False, force=True)
    assert not (out / "keep.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["img_align_celeba", "README.md", *TEXT_FILES]
    )
    assert _lines(out / "list_attr_celeba.txt")[0] == "3"  # the new set's labels, 3 rows
    assert len(_lines(out / "list_attr_celeba.txt")) == 3 + 2
    for i in range(1, 4):
        with Image.open(out / "img_align_celeba" / f"{i:06d}.jpg") as im:
            assert im.size == (178, 218)


def test_a_crash_mid_write_leaves_nothing_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth._render

    def flaky(p):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk on fire")
        return real(p)

    monkeypatch.setattr(synth, "_render", flaky)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_synthfaces(tmp_path / "faces", n=12, workers=1, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a staging sibling


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="index"):
        sample_params(0, 10, 10)
    with pytest.raises(ValueError, match="Attractive"):
        with_attribute(sample_params(0, 0, 10), "Attractive", True)
    with pytest.raises(ValueError, match="workers"):
        write_synthfaces("unused", n=2, workers=0)
    p = sample_params(0, 0, 10)
    assert dataclasses.replace(p).labels.tolist() == p.labels.tolist()


def test_round_trip_through_the_celeba_reader(written):
    from conceptvae.data.celeba import read_celeba

    out, _ = written
    data = read_celeba(out)
    assert data.layout == "celeba-official" and len(data) == N
    assert data.attr_names == list(CELEBA_ATTRIBUTES)
    np.testing.assert_array_equal(data.labels, (synth_labels(SEED, N) > 0).astype(np.uint8))
    params = [sample_params(SEED, i, N) for i in range(N)]
    np.testing.assert_array_equal(data.partition, [p.partition for p in params])
    np.testing.assert_array_equal(data.identity, [p.identity for p in params])
    drawn = np.stack([render_face(p)[1] for p in params])
    np.testing.assert_array_equal(data.landmarks, np.rint(drawn))
    assert data.bbox.shape == (N, 4)

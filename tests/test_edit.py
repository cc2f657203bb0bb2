"""EditPipeline and the `edit`, `interpolate` and `grid` commands on a tiny random model, with
SynthFaces pasted into larger photos (so detection has a real photo to search).

Every test checks a property a user relies on: the photo away from the face is untouched, the
output has the input's size, format, EXIF and name, interpolation starts and ends on the photos'
own latents, grids have the asked-for cells, and every bad input ends in one clear line (or a
correct output), never a traceback or a half-written file.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_faces import _background, _paste, _similarity, _synth
from test_images import _png, _zeros_zlib

from attributes.bank import VectorBank
from conceptvae.cli import cli
from conceptvae.edit import BLENDS, EditPipeline
from conceptvae.faces import photo_mask, warp_mask_to_photo
from conceptvae.grids import interpolate
from conceptvae.images import read_image
from conceptvae.model import ConceptVAE, VAEConfig

CELL, PAD = 96, 2  # the commands' grid cell and padding
MAKE = 0x010F  # EXIF tag: camera make
ORIENTATION = 0x0112

# a random-init model reconstructs nothing well: the pipeline's warning says so every time
pytestmark = pytest.mark.filterwarnings("ignore:.*far from the training data:UserWarning")


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


def make_run(run):
    """A tiny random-init model in ``run`` and a bank of three random vectors made for it."""
    torch.manual_seed(0)
    vae = ConceptVAE(VAEConfig(image_size=64, latent_dim=8, patch_size=16, channels=(8,)))
    vae.save_pretrained(run)
    g = torch.Generator().manual_seed(1)
    vectors = {n: 2 * torch.randn(8, generator=g) for n in ("Smiling", "Male", "Eyeglasses")}
    # footprints: Smiling acts on a disk around the mouth, Male on the lower half of the crop;
    # Eyeglasses has none (the auto blend falls back to residual for it)
    yy, xx = np.mgrid[0:64, 0:64]
    footprints = {
        "Smiling": np.clip(1 - np.hypot(xx - 32, yy - 44) / 14, 0, None).astype(np.float32),
        "Male": (yy > 32).astype(np.float32),
    }
    VectorBank(vectors, metadata={"model_hash": vae.model_hash()}, footprints=footprints).save(run)
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("edit") / "run")


@pytest.fixture(scope="module")
def pipe(run_dir):
    return EditPipeline.from_pretrained(run_dir)


def face_photo(i: int = 2, size=(300, 360), centre=(180, 150), scale=1.0, seed=0) -> np.ndarray:
    """(H, W, 3) uint8: SynthFaces face ``i`` pasted upright into a gradient background."""
    img, pts = _synth(i)
    M = _similarity(scale, 0.0, pts.mean(0), centre)
    return _paste(_background(*size, seed), img, M)


@pytest.fixture(scope="module")
def photo():
    return face_photo()


@pytest.fixture(scope="module")
def three_faces():
    """A 900 x 400 photo with three faces: 1.0x at left, 1.6x (the largest) in the middle,
    1.25x at right."""
    photo = _background(400, 900, 4)
    for i, (scale, cx) in zip((10, 11, 12), [(1.0, 130), (1.6, 440), (1.25, 750)]):
        img, pts = _synth(i)
        photo = _paste(photo, img, _similarity(scale, 0.0, pts.mean(0), (cx, 190)))
    return photo


def save(a: np.ndarray, path, **kw):
    Image.fromarray(a).save(path, **kw)
    return path


def load(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _is_progress(line: str) -> bool:
    return "photo/s" in line or "s/photo" in line or "%|" in line


def stderr_lines(result) -> list[str]:
    return [x for x in result.stderr.splitlines() if x.strip() and not _is_progress(x)]


def no_crash(result) -> None:
    """Whatever happened was handled: no exception escaped (CliRunner swallows tracebacks)."""
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert "Traceback" not in result.output


def ok(result) -> None:
    no_crash(result)
    assert result.exit_code == 0, result.output


def one_line_error(result, *fragments) -> str:
    no_crash(result)
    assert result.exit_code != 0, result.output
    err = stderr_lines(result)
    assert len(err) == 1, err
    for f in fragments:
        assert f in err[0], err[0]
    return err[0]


def empty_or_absent(folder) -> None:
    """Nothing half-written left in an -o folder (temporary files start with '.')."""
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


def changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(-1)


def check_grid(im: Image.Image, rows: int, cols: int) -> tuple[int, int]:
    """Assert ``im`` is a rows x cols grid of CELL px cells separated by PAD px of white and
    return the label bands' (left, top) sizes (the layout of ``grids.image_grid``)."""
    a = np.asarray(im.convert("RGB")).astype(int)
    h, w = a.shape[:2]
    left = w - (2 * PAD + cols * CELL + (cols - 1) * PAD)
    top = h - (2 * PAD + rows * CELL + (rows - 1) * PAD)
    assert left >= 0 and top >= 0, (w, h)
    x0, y0 = PAD + left, PAD + top
    for j in range(1, cols):  # white gaps between the columns, over the cells' height
        x = x0 + j * (CELL + PAD) - PAD
        assert (a[y0 : h - PAD, x : x + PAD] == 255).all(), f"no gap before column {j}"
    for i in range(1, rows):
        y = y0 + i * (CELL + PAD) - PAD
        assert (a[y : y + PAD, x0 : w - PAD] == 255).all(), f"no gap before row {i}"
    for i in range(rows):
        for j in range(cols):
            x, y = x0 + j * (CELL + PAD), y0 + i * (CELL + PAD)
            assert a[y : y + CELL, x : x + CELL].std() > 1, f"cell ({i}, {j}) is blank"
    return left, top


def _dark(a: np.ndarray) -> bool:
    return bool((a.mean(-1) < 100).any())


# ---------------------------------------------------------------------------------------------
# the pipeline: blends, strength 0, size


@pytest.mark.parametrize("blend", BLENDS)
def test_outside_the_face_mask_is_bit_identical_and_inside_changes(pipe, photo, blend):
    prepared = pipe.prepare(Image.fromarray(photo))
    assert len(prepared.faces) == 1
    out = np.asarray(pipe(prepared, "Smiling", 2.0, blend=blend))
    assert out.shape == photo.shape and out.dtype == np.uint8
    if blend in ("auto", "local"):  # Smiling has a footprint: the edit stays inside it
        weight = pipe.footprint("Smiling", 2.0).numpy()
        mask = warp_mask_to_photo(weight, prepared.faces[0].aligned, photo.shape)
    else:
        mask = photo_mask(prepared.faces[0].aligned, photo.shape, pipe.feather)
    outside = mask == 0
    assert 0.5 < outside.mean() < 0.995
    np.testing.assert_array_equal(out[outside], photo[outside])
    assert changed(out, photo)[mask > 0.5].mean() > 0.5  # the edit shows on the face


def test_strength_zero_returns_the_photo_bit_for_bit(pipe, photo):
    prepared = pipe.prepare(Image.fromarray(photo))
    for blend in BLENDS:
        out = np.asarray(pipe(prepared, "Smiling", 0.0, blend=blend))
        assert np.array_equal(out, photo), blend
    # residual: a vanishing edit is a vanishing change (replace would show the decoded face)
    tiny = np.asarray(pipe(prepared, "Smiling", 1e-4, blend="residual"))
    assert np.abs(tiny.astype(int) - photo.astype(int)).max() <= 1
    swapped = np.asarray(pipe(prepared, "Smiling", 1e-4, blend="replace"))
    assert np.abs(swapped.astype(int) - photo.astype(int)).max() > 10


def test_output_has_the_inputs_size_and_sweep_one_per_strength(pipe):
    a = face_photo(3, size=(330, 250), centre=(125, 165), scale=0.9)
    out = pipe(Image.fromarray(a), "Smiling - 0.5*Male", 1.5)
    assert out.size == (250, 330) and out.mode == "RGB"
    frames = pipe.sweep(Image.fromarray(a), "Male", [-1, 0, 1])
    assert [f.size for f in frames] == [(250, 330)] * 3
    assert np.array_equal(np.asarray(frames[1]), a)  # the 0 frame is the photo itself
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[2]))


# ---------------------------------------------------------------------------------------------
# the edit command: names, formats, EXIF, sweeps


def test_edit_keeps_format_exif_size_and_names_in_the_o_folder(run_dir, photo, tmp_path):
    exif = Image.Exif()
    exif[MAKE] = "TestCam"
    jpg = save(photo, tmp_path / "me.jpg", quality=95, exif=exif.tobytes())
    png = save(face_photo(4, seed=1), tmp_path / "you.png")
    out = tmp_path / "out"
    r = run("edit", run_dir, jpg, png, "--edit", "Smiling+1.5", "-o", out, "--device", "cpu")
    ok(r)
    assert sorted(p.name for p in out.iterdir()) == ["me.jpg", "you.png"]
    with Image.open(out / "me.jpg") as im:
        assert im.format == "JPEG" and im.size == (360, 300)
        assert im.getexif()[MAKE] == "TestCam"
    with Image.open(out / "you.png") as im:
        assert im.format == "PNG" and im.size == (360, 300)
    assert not np.array_equal(load(out / "you.png"), load(png))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["me.jpg", "out", "you.png"]


def test_edit_without_o_writes_name_edited_beside_the_input(run_dir, photo, tmp_path):
    src = save(photo, tmp_path / "holiday.jpeg", quality=95)
    ok(run("edit", run_dir, src, "--edit", "Male"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["holiday.jpeg", "holiday_edited.jpeg"]
    with Image.open(tmp_path / "holiday_edited.jpeg") as im:
        assert im.format == "JPEG" and im.size == (360, 300)


def test_sweep_writes_a_strip_and_a_gif(run_dir, photo, tmp_path):
    src = save(photo, tmp_path / "me.jpg", quality=95)
    out = tmp_path / "out"
    ok(run("edit", run_dir, src, "--sweep", "Smiling=-2:2:5", "--gif", "-o", out))
    assert sorted(p.name for p in out.iterdir()) == ["me_sweep.gif", "me_sweep.jpg"]
    with Image.open(out / "me_sweep.jpg") as im:
        assert im.format == "JPEG" and im.width > 5 * 360 and im.height < 2 * 300
    with Image.open(out / "me_sweep.gif") as gif:
        assert gif.n_frames == 2 * 5 - 2  # there and back, the ends once
        assert gif.size == (360, 300)
    # without -o the strip goes beside the input
    ok(run("edit", run_dir, src, "--sweep", "Male=-1,1"))
    assert (tmp_path / "me_sweep.jpg").is_file()


# ---------------------------------------------------------------------------------------------
# interpolate and grid


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_interpolation_ends_on_the_photos_own_latents(pipe, method):
    fa = pipe.prepare(Image.fromarray(face_photo(2))).faces[0]
    fb = pipe.prepare(Image.fromarray(face_photo(5, seed=2))).faces[0]
    zs = interpolate(fa.z, fb.z, 6, method)
    assert zs.shape == (6, 8)
    torch.testing.assert_close(zs[0], fa.z, rtol=0, atol=1e-6)
    torch.testing.assert_close(zs[-1], fb.z, rtol=0, atol=1e-6)
    ends = pipe.crops(fa, zs[[0, -1]], residual=False)  # decoded: the faces' reconstructions
    torch.testing.assert_close(ends, torch.stack([fa.recon, fb.recon]), rtol=0, atol=1e-5)


def test_interpolate_command_row_and_square_grid(run_dir, tmp_path):
    paths = [save(face_photo(i, seed=i), tmp_path / f"p{i}.png") for i in (2, 3, 4, 5)]
    steps = 4
    row = tmp_path / "row.png"
    ok(run("interpolate", run_dir, *paths[:2], "--steps", steps, "-o", row, "--gif"))
    with Image.open(row) as im:
        assert im.format == "PNG" and im.width > im.height
        left, _ = check_grid(im, 1, steps + 2)  # photo A, the steps, photo B
        assert left == 0
    with Image.open(row.with_suffix(".gif")) as gif:
        assert gif.n_frames == 2 * steps - 2
    square = tmp_path / "square.png"
    ok(run("interpolate", run_dir, *paths, "--steps", 3, "--method", "lerp", "-o", square))
    with Image.open(square) as im:
        check_grid(im, 3, 3)
        assert im.width == 2 * PAD + 3 * CELL + 2 * PAD  # square cells, a title band on top
    r = run("interpolate", run_dir, *paths[:3], "-o", tmp_path / "x.png")
    no_crash(r)
    assert r.exit_code == 2 and "Error: give 2 or 4 photos, got 3" in r.stderr  # usage error
    assert not (tmp_path / "x.png").exists()


def test_grid_command_has_3_rows_5_columns_and_labels(run_dir, photo, tmp_path):
    src = save(photo, tmp_path / "me.png")
    out = tmp_path / "plane.png"
    r = run("grid", run_dir, src, "--x", "Smiling=-2:2:5", "--y", "Male=-1:1:3", "-o", out)
    ok(r)
    assert "wrote" in r.output
    with Image.open(out) as im:
        assert im.format == "PNG"
        left, top = check_grid(im, 3, 5)
        a = np.asarray(im.convert("RGB"))
    assert left > 0 and top > 0
    y0, x0 = PAD + top, PAD + left
    for j in range(5):  # a strength above every column (the outer ones clear of the title)
        x = x0 + j * (CELL + PAD)
        assert _dark(a[:y0, x : x + CELL]), f"no label above column {j}"
    for i in range(3):
        y = y0 + i * (CELL + PAD)
        assert _dark(a[y : y + CELL, :x0]), f"no label left of row {i}"
    r = run(
        "grid", run_dir, src, "--x", "Smilng=-1:1:3", "--y", "Male=0,1", "-o", tmp_path / "b.png"
    )
    one_line_error(r, "did you mean 'Smiling'")
    assert not (tmp_path / "b.png").exists()


# ---------------------------------------------------------------------------------------------
# bad input: one clear line, or a correct output


@pytest.fixture
def out(tmp_path):
    return tmp_path / "out"


def edit(run_dir, *args):
    return run("edit", run_dir, *args)


def test_missing_file(run_dir, tmp_path, out):
    r = edit(run_dir, tmp_path / "nope.jpg", "--edit", "Smiling", "-o", out)
    one_line_error(r, "nope.jpg", "no such file")
    empty_or_absent(out)


def test_folder_of_non_images(run_dir, tmp_path, out):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "notes.txt").write_text("hello\n")
    (docs / "table.csv").write_text("a,b\n1,2\n")
    one_line_error(edit(run_dir, docs, "--edit", "Smiling", "-o", out), "folder has no images")
    empty_or_absent(out)


def _truncated_jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=90)
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _bomb_png() -> bytes:
    """A true 30000 x 30000 1-bit PNG header and data, about 60 kB (nothing to decode here)."""
    w = h = 30000
    row = 1 + w // 8
    return _png(w, h, 1, 0, _zeros_zlib(row * h, row * 100))


BAD_FILES = {  # name: (bytes or a maker, what the message says)
    "text.jpg": (b"just some notes, not a photo\n", "is a text file, not an image"),
    "empty.jpg": (b"", "empty (0 bytes)"),
    "dot.png": (lambda p: save(np.zeros((1, 1, 3), np.uint8), p), "1 x 1 pixels, too small"),
    "huge.png": (lambda p: p.write_bytes(_bomb_png()), "30000 x 30000 = 900.0 megapixels"),
    "cut.jpg": (lambda p: p.write_bytes(_truncated_jpeg(face_photo())), "truncated or damaged"),
}


def _make_bad(folder, name):
    content, _ = BAD_FILES[name]
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        content(path)
    return path


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_bad_file_is_one_line_naming_it(run_dir, tmp_path, out, name):
    path = _make_bad(tmp_path, name)
    r = edit(run_dir, path, "--edit", "Smiling", "-o", out)
    line = one_line_error(r, name, BAD_FILES[name][1])
    assert r.exit_code == 1 and line.startswith("failed:")
    empty_or_absent(out)


def _icc(space: bytes) -> bytes:
    """A minimal ICC profile header (no tags) declaring colour space ``space``."""
    header = bytearray(128)
    header[4:8] = b"none"
    header[8:12] = bytes([2, 0x10, 0, 0])
    header[12:16] = b"prtr" if space == b"CMYK" else b"mntr"
    header[16:20] = space
    header[20:24] = b"Lab " if space == b"CMYK" else b"XYZ "
    header[36:40] = b"acsp"
    data = bytes(header) + struct.pack(">I", 0)
    return struct.pack(">I", len(data)) + data[4:]


def test_cmyk_jpeg_gives_an_rgb_jpeg(run_dir, photo, tmp_path, out):
    src = tmp_path / "print.jpg"
    Image.fromarray(photo).convert("CMYK").save(src, quality=95, icc_profile=_icc(b"CMYK"))
    assert read_image(src).icc_profile is None  # it describes the CMYK, not our RGB
    ok(edit(run_dir, src, "--edit", "Smiling+2", "-o", out))
    with Image.open(out / "print.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (360, 300)
        icc = im.info.get("icc_profile")
        # a CMYK profile on RGB pixels would make colour-managed viewers show nonsense
        assert icc is None or icc[16:20] == b"RGB ", icc[16:20]
    assert np.abs(load(out / "print.jpg").astype(int) - photo.astype(int)).mean() < 12


def test_16_bit_png_gives_an_8_bit_png(run_dir, photo, tmp_path, out):
    h, w = photo.shape[:2]
    wide = photo.astype(">u2") * 257
    raw = b"".join(b"\0" + wide[y].tobytes() for y in range(h))
    src = tmp_path / "scan.png"
    src.write_bytes(_png(w, h, 16, 2, zlib.compress(raw, 1)))
    ok(edit(run_dir, src, "--edit", "Smiling+2", "-o", out))
    with Image.open(out / "scan.png") as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (w, h)
    edited = load(out / "scan.png")
    assert (edited[:20, :20] == photo[:20, :20]).all()  # away from the face: the same pixels
    assert changed(edited, photo).any()


def test_rgba_png_is_flattened_on_white(run_dir, photo, tmp_path, out):
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:30, :30, 3] = 0  # a transparent corner
    src = save(rgba, tmp_path / "cut_out.png")
    ok(edit(run_dir, src, "--edit", "Smiling+2", "-o", out))
    with Image.open(out / "cut_out.png") as im:
        assert im.mode == "RGB" and im.size == (360, 300)
    edited = load(out / "cut_out.png")
    assert (edited[:30, :30] == 255).all()
    assert (edited[-30:, -30:] == photo[-30:, -30:]).all()


def test_exif_rotated_photo_comes_out_upright(run_dir, pipe, photo, tmp_path, out):
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # viewers turn it 90 degrees clockwise
    exif[MAKE] = "TestCam"
    src = save(np.ascontiguousarray(np.rot90(photo)), tmp_path / "phone.jpg", quality=95,
               exif=exif.tobytes())  # fmt: skip
    with Image.open(src) as im:
        assert im.size == (300, 360)  # stored sideways
    ok(edit(run_dir, src, "--edit", "Smiling+2", "-o", out))
    with Image.open(out / "phone.jpg") as im:
        assert im.size == (360, 300)  # the upright size
        assert im.getexif().get(ORIENTATION, 1) == 1 and im.getexif()[MAKE] == "TestCam"
    edited = load(out / "phone.jpg").astype(int)
    assert np.abs(edited - photo.astype(int)).mean() < 12  # upright, not turned
    # the edit is on the face found in the upright photo; elsewhere only JPEG noise
    prepared = pipe.prepare(src)
    upright = prepared.pixels.astype(int)
    mask = photo_mask(prepared.faces[0].aligned, upright.shape, pipe.feather)
    diff = np.abs(edited - upright).mean(-1)
    assert diff[mask == 0].mean() < 2 and diff[mask > 0.5].mean() > 4 * diff[mask == 0].mean()


def test_no_face_names_no_align_which_then_works(run_dir, tmp_path, out):
    src = save(_background(240, 320, 3), tmp_path / "wall.png")
    one_line_error(edit(run_dir, src, "--edit", "Smiling", "-o", out), "no face", "--no-align")
    empty_or_absent(out)
    ok(edit(run_dir, src, "--edit", "Smiling+2", "--no-align", "-o", out))
    assert load(out / "wall.png").shape == (240, 320, 3)


def test_three_faces_default_edits_the_largest_all_edits_all(run_dir, pipe, three_faces, tmp_path):
    src = save(three_faces, tmp_path / "group.png")
    faces = pipe.prepare(src, face="all").faces
    assert len(faces) == 3
    masks = [photo_mask(f.aligned, three_faces.shape, pipe.feather) > 0 for f in faces]
    assert not (masks[0] & masks[1]).any() and not (masks[0] & masks[2]).any()

    ok(edit(run_dir, src, "--edit", "Smiling+2", "-o", tmp_path / "one"))
    diff = changed(load(tmp_path / "one" / "group.png"), three_faces)
    assert diff[masks[0]].mean() > 0.3
    assert not diff[~masks[0]].any()  # faces 1 and 2 and the background untouched

    ok(edit(run_dir, src, "--edit", "Smiling+2", "--face", "all", "-o", tmp_path / "all"))
    diff = changed(load(tmp_path / "all" / "group.png"), three_faces)
    for m in masks:
        assert diff[m].mean() > 0.3
    assert not diff[~(masks[0] | masks[1] | masks[2])].any()

    out = tmp_path / "five"
    r = edit(run_dir, src, "--edit", "Smiling", "--face", "5", "-o", out)
    one_line_error(r, "--face 5", "3 faces found")
    empty_or_absent(out)


def test_unknown_attribute_suggests_the_name(run_dir, photo, tmp_path, out):
    src = save(photo, tmp_path / "me.png")
    r = edit(run_dir, src, "--edit", "Smilng+1", "-o", out)
    one_line_error(r, "unknown attribute 'Smilng'", "did you mean 'Smiling'")
    empty_or_absent(out)
    r = edit(run_dir, src, "--sweep", "Mael=-1:1:3", "-o", out)
    one_line_error(r, "did you mean 'Male'")
    empty_or_absent(out)


def test_bank_of_another_model_says_so(run_dir, photo, tmp_path, out):
    other = tmp_path / "run"
    ConceptVAE.from_pretrained(run_dir).save_pretrained(other)
    VectorBank({"Smiling": np.ones(8, np.float32)}, metadata={"model_hash": "0" * 16}).save(other)
    src = save(photo, tmp_path / "me.png")
    one_line_error(edit(other, src, "--edit", "Smiling", "-o", out), "another model")
    empty_or_absent(out)


def test_o_in_a_missing_parent_folder(run_dir, photo, tmp_path):
    src = save(photo, tmp_path / "me.png")
    r = edit(run_dir, src, "--edit", "Smiling", "-o", tmp_path / "no" / "such" / "out")
    one_line_error(r, "does not exist")
    assert not (tmp_path / "no").exists()


def test_batch_writes_the_good_reports_the_bad_exits_1(run_dir, tmp_path, out):
    photos = tmp_path / "photos"
    photos.mkdir()
    save(face_photo(2), photos / "a.jpg", quality=95)
    save(face_photo(3, seed=5), photos / "b.png")
    save(_background(200, 200, 1), photos / "c_wall.png")
    for name in ("text.jpg", "empty.jpg", "dot.png"):
        _make_bad(photos, name)
    r = edit(run_dir, photos, "--edit", "Smiling+1", "-o", out)
    no_crash(r)
    assert r.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.png"]
    assert "edited 2 photos" in r.stdout
    failed = [x for x in stderr_lines(r) if x.startswith("failed:")]
    names = sorted(x.split(":")[1].strip().rsplit("/", 1)[-1] for x in failed)
    assert names == ["c_wall.png", "dot.png", "empty.jpg", "text.jpg"], failed
    assert all(x.startswith(("failed:", "warning:")) for x in stderr_lines(r)), stderr_lines(r)


def test_two_inputs_with_one_name_are_refused_before_anything_is_written(tmp_path, run_dir, photo):
    for d in ("A", "B"):
        (tmp_path / d).mkdir()
        Image.fromarray(photo).save(tmp_path / d / "me.jpg")
    out = tmp_path / "out"
    r = CliRunner().invoke(
        cli,
        ["edit", str(run_dir), str(tmp_path / "A" / "me.jpg"), str(tmp_path / "B" / "me.jpg"),
         "--edit", "Smiling", "-o", str(out)],
    )  # fmt: skip
    assert r.exit_code != 0
    assert "would both be written to" in r.stderr
    assert not any(out.iterdir())

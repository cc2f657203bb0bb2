import io
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from conceptvae.errors import DataError, OutputError
from conceptvae.images import (
    Photo,
    collect_inputs,
    output_path,
    pil_to_tensor,
    read_image,
    tensor_to_pil,
    to_rgb,
    write_image,
)

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def _pattern(w=24, h=20):
    """A deterministic RGB image with distinct pixel values (for exact round trips)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([x * 10 % 256, y * 12 % 256, (x * 7 + y * 3) % 256], axis=-1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def _png(width, height, bit_depth, colour_type, idat):
    """PNG bytes from a hand-built IHDR and an already-compressed IDAT payload."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _zeros_zlib(n, block):
    """A valid zlib stream of ``n`` zero bytes (``n`` a multiple of ``block``) without
    compressing ``n`` bytes: after a full flush deflate restarts, so every block of zeros
    compresses to the same bytes; the Adler-32 of n zeros is (n mod 65521) << 16 | 1."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = c.compress(b"\0" * block) + c.flush(zlib.Z_FULL_FLUSH)
    tail = c.flush()
    adler = ((n % 65521) << 16) | 1
    return b"\x78\xda" + piece * (n // block) + tail + struct.pack(">I", adler)


def _jpeg_with_marker(path, orientation):
    """A 40 x 24 JPEG, black with a red 8 x 8 block in the stored top-left, and an EXIF
    orientation tag (plus a Make tag to check that EXIF survives)."""
    a = np.zeros((24, 40, 3), np.uint8)
    a[:8, :8] = RED
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "TestCam"
    Image.fromarray(a).save(path, quality=95, exif=exif.tobytes())


def _is(rgb, colour, tol=40):
    return all(abs(int(a) - b) <= tol for a, b in zip(rgb, colour))


# ------------------------------------------------------------------------------------------------
# Formats


@pytest.mark.parametrize("ext", [".png", ".bmp", ".tif", ".tiff", ".webp"])
def test_lossless_formats_round_trip_exactly(tmp_path, ext):
    im = _pattern()
    params = {"lossless": True} if ext == ".webp" else {}
    im.save(tmp_path / f"a{ext}", **params)
    photo = read_image(tmp_path / f"a{ext}")
    assert photo.image.mode == "RGB" and photo.size == (24, 20)
    assert np.array_equal(np.asarray(photo.image), np.asarray(im))


@pytest.mark.parametrize(
    "ext, fmt",
    [(".jpg", "JPEG"), (".jpeg", "JPEG"), (".png", "PNG"), (".webp", "WEBP"), (".bmp", "BMP")]
    + [(".tif", "TIFF"), (".TIFF", "TIFF")],
)
def test_write_then_read_each_format(tmp_path, ext, fmt):
    im = _pattern()
    out = write_image(im, tmp_path / f"out{ext}")
    assert out == tmp_path / f"out{ext}"
    photo = read_image(out)
    assert photo.format == fmt and photo.size == im.size
    diff = np.abs(np.asarray(photo.image, int) - np.asarray(im, int))
    if fmt in ("JPEG", "WEBP"):
        assert diff.mean() < 6  # lossy at quality 95
    else:
        assert diff.max() == 0


def test_jpeg_is_written_with_full_colour_resolution(tmp_path):
    write_image(_pattern(), tmp_path / "a.jpg")
    with Image.open(tmp_path / "a.jpg") as im:
        assert im.layer[0][1:3] == im.layer[1][1:3] == (1, 1)  # 4:4:4, no chroma subsampling


def test_exif_orientation_6_comes_back_upright(tmp_path):
    _jpeg_with_marker(tmp_path / "r.jpg", 6)  # viewers rotate 90 degrees clockwise
    photo = read_image(tmp_path / "r.jpg")
    assert photo.size == (24, 40)
    a = np.asarray(photo.image)
    assert _is(a[3, 20], RED)  # the stored top-left is now top-right
    assert _is(a[3, 3], (0, 0, 0)) and _is(a[36, 3], (0, 0, 0))
    exif = Image.Exif()
    exif.load(photo.exif)
    assert exif[0x0112] == 1 and exif[0x010F] == "TestCam"


def test_exif_orientation_3_and_written_exif_says_1(tmp_path):
    _jpeg_with_marker(tmp_path / "r.jpg", 3)  # rotated 180 degrees
    photo = read_image(tmp_path / "r.jpg")
    assert photo.size == (40, 24)
    a = np.asarray(photo.image)
    assert _is(a[20, 36], RED) and _is(a[3, 3], (0, 0, 0))
    write_image(photo.image, tmp_path / "out.jpg", like=photo)
    with Image.open(tmp_path / "out.jpg") as out:
        assert out.getexif()[0x0112] == 1 and out.getexif()[0x010F] == "TestCam"
    again = read_image(tmp_path / "out.jpg")  # not rotated a second time
    assert _is(np.asarray(again.image)[20, 36], RED)


# ------------------------------------------------------------------------------------------------
# Modes


def test_rgba_transparent_becomes_white_opaque_keeps_colour(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[:, :10] = (10, 20, 30, 255)
    a[:, 10:] = (200, 0, 0, 0)
    Image.fromarray(a, "RGBA").save(tmp_path / "a.png")
    rgb = np.asarray(read_image(tmp_path / "a.png").image)
    assert (rgb[:, :10] == (10, 20, 30)).all() and (rgb[:, 10:] == WHITE).all()


def test_la_half_transparent_is_blended_on_white(tmp_path):
    a = np.zeros((20, 20, 2), np.uint8)
    a[..., 0], a[:10, :, 1], a[10:, :, 1] = 100, 255, 0
    Image.fromarray(a, "LA").save(tmp_path / "a.png")
    rgb = np.asarray(read_image(tmp_path / "a.png").image)
    assert (rgb[:10] == 100).all() and (rgb[10:] == 255).all()


def test_palette_with_transparent_index(tmp_path):
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 128, 0] + [255, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 20, 10))
    im.save(tmp_path / "p.png", transparency=1)
    rgb = np.asarray(read_image(tmp_path / "p.png").image)
    assert (rgb[:10] == WHITE).all() and (rgb[10:] == (0, 128, 0)).all()


def test_grey_and_bilevel(tmp_path):
    Image.new("L", (20, 20), 77).save(tmp_path / "l.png")
    Image.new("1", (20, 20), 1).save(tmp_path / "b.bmp")
    assert (np.asarray(read_image(tmp_path / "l.png").image) == 77).all()
    assert (np.asarray(read_image(tmp_path / "b.bmp").image) == 255).all()


def test_cmyk_jpeg_reads_as_rgb(tmp_path):
    im = Image.new("CMYK", (24, 24), (0, 255, 255, 0))  # pure red in CMYK
    im.paste((255, 255, 0, 0), (0, 12, 24, 24))  # cyan + magenta = blue
    im.save(tmp_path / "c.jpg", quality=95)
    photo = read_image(tmp_path / "c.jpg")
    a = np.asarray(photo.image)
    assert photo.image.mode == "RGB"
    assert _is(a[4, 12], RED, 12) and _is(a[20, 12], BLUE, 12)


def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path):
    a = np.zeros((20, 30), np.uint16)
    a[:, :10], a[:, 10:20], a[:, 20:] = 65535, 32768, 257
    Image.fromarray(a).save(tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "I;16"
    rgb = np.asarray(read_image(tmp_path / "g.png").image)
    assert (rgb[:, :10] == 255).all() and (rgb[:, 10:20] == 128).all()
    assert (rgb[:, 20:] == 1).all()  # 16-bit data: dark stays dark even when all values <= 255


def test_16_bit_rgb_png(tmp_path):
    w, h = 16, 16
    px = struct.pack(">HHH", 65535, 32768, 0) * w
    raw = b"".join(b"\0" + px for _ in range(h))
    (tmp_path / "c.png").write_bytes(_png(w, h, 16, 2, zlib.compress(raw)))
    rgb = np.asarray(read_image(tmp_path / "c.png").image)
    assert (rgb == (255, 128, 0)).all()


def test_to_rgb_modes_i_and_f():
    i = Image.fromarray(np.full((4, 4), 65535, np.int32), "I")
    f = Image.fromarray(np.full((4, 4), 100.0, np.float32), "F")
    assert (np.asarray(to_rgb(i)) == 255).all() and (np.asarray(to_rgb(f)) == 100).all()
    rgb = Image.new("RGB", (4, 4))
    assert to_rgb(rgb) is rgb


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, BLUE, (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    photo = read_image(tmp_path / "a.gif")
    assert photo.format == "GIF" and (np.asarray(photo.image) == RED).all()


def test_animated_webp_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in (BLUE, RED)]
    frames[0].save(
        tmp_path / "a.webp", save_all=True, append_images=frames[1:], lossless=True, duration=50
    )
    assert (np.asarray(read_image(tmp_path / "a.webp").image) == BLUE).all()


# ------------------------------------------------------------------------------------------------
# Refusals


def test_true_30000_square_png_refused_from_header(tmp_path, monkeypatch):
    w = h = 30000
    row = 1 + w // 8  # filter byte + 1-bit pixels
    data = _png(w, h, 1, 0, _zeros_zlib(row * h, row * 100))
    assert len(data) < 200_000
    (tmp_path / "bomb.png").write_bytes(data)

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(DataError, match=r"30000 x 30000 = 900\.0 megapixels.*downscale") as e:
        read_image(tmp_path / "bomb.png")
    assert "bomb.png" in str(e.value) and "89.5" in str(e.value)


@pytest.mark.parametrize("limit", [3000, 1000])  # Pillow warns above 1x, errors above 2x
def test_image_over_lowered_pixel_limit_is_refused(tmp_path, monkeypatch, limit):
    _pattern(64, 64).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match="64 x 64 = 0.0 megapixels, more than the limit"):
        read_image(tmp_path / "a.png")


def test_truncated_jpeg(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG", quality=90)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match="truncated or damaged JPEG") as e:
        read_image(tmp_path / "cut.jpg")
    assert str(tmp_path / "cut.jpg") in str(e.value)


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DataError, match=r"cut\.png is a truncated or damaged PNG"):
        read_image(tmp_path / "cut.png")


def test_damaged_header(tmp_path):
    (tmp_path / "h.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(DataError, match=r"h\.png is a damaged PNG image"):
        read_image(tmp_path / "h.png")


def test_empty_file(tmp_path):
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"e\.jpg is empty \(0 bytes\)"):
        read_image(tmp_path / "e.jpg")


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "t.jpg").write_text("hello, I am not a photo\n")
    with pytest.raises(DataError, match=r"t\.jpg is a text file, not an image \(despite its .jpg"):
        read_image(tmp_path / "t.jpg")


def test_binary_junk(tmp_path):
    (tmp_path / "j.jpg").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match=r"j\.jpg is not an image.*no known image format"):
        read_image(tmp_path / "j.jpg")


def test_other_format_is_named(tmp_path):
    _pattern().save(tmp_path / "a.ppm")
    with pytest.raises(DataError, match=r"a\.ppm is a PPM image; conceptvae reads JPEG, PNG"):
        read_image(tmp_path / "a.ppm")


def test_one_pixel_image_is_too_small(tmp_path):
    Image.new("RGB", (1, 1)).save(tmp_path / "tiny.png")
    Image.new("RGB", (200, 15)).save(tmp_path / "thin.png")
    with pytest.raises(DataError, match=r"tiny\.png is 1 x 1 pixels, too small .* 16 px"):
        read_image(tmp_path / "tiny.png")
    with pytest.raises(DataError, match="200 x 15 pixels"):
        read_image(tmp_path / "thin.png")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(DataError, match=r"no such file: .*nope\.jpg"):
        read_image(tmp_path / "nope.jpg")
    with pytest.raises(DataError, match="is a folder, not an image file"):
        read_image(tmp_path)


# ------------------------------------------------------------------------------------------------
# Writing


def test_write_keeps_exif_and_icc(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    _pattern().save(tmp_path / "in.jpg", exif=exif.tobytes(), icc_profile=b"fake-icc")
    photo = read_image(tmp_path / "in.jpg")
    assert photo.icc_profile == b"fake-icc"
    for ext in (".jpg", ".png", ".webp"):
        write_image(photo.image, tmp_path / f"out{ext}", like=photo)
        with Image.open(tmp_path / f"out{ext}") as im:
            assert im.info.get("icc_profile") == b"fake-icc", ext
            assert im.getexif()[0x010F] == "TestCam", ext
    write_image(photo.image, tmp_path / "out.tif", like=photo)
    assert read_image(tmp_path / "out.tif").icc_profile == b"fake-icc"


def test_write_without_like_has_no_metadata(tmp_path):
    _pattern().save(tmp_path / "in.png", icc_profile=b"fake-icc")
    photo = read_image(tmp_path / "in.png")
    write_image(photo.image, tmp_path / "out.png")
    with Image.open(tmp_path / "out.png") as im:
        assert "icc_profile" not in im.info and not im.getexif()


def test_write_unknown_extension(tmp_path):
    with pytest.raises(OutputError, match=r"extension '\.gif'; use one of \.jpg \.jpeg \.png"):
        write_image(_pattern(), tmp_path / "a.gif")
    with pytest.raises(OutputError, match="no extension"):
        write_image(_pattern(), tmp_path / "a")
    assert list(tmp_path.iterdir()) == []


def test_write_into_missing_folder(tmp_path):
    with pytest.raises(OutputError, match=r"folder .*nope does not exist: create it or choose"):
        write_image(_pattern(), tmp_path / "nope" / "a.png")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "keep.png").write_bytes(b"old")

    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half an image")
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_image(_pattern(), tmp_path / "new.png")
    with pytest.raises(RuntimeError):
        write_image(_pattern(), tmp_path / "keep.png")
    assert sorted(os.listdir(tmp_path)) == ["keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old"


def test_write_converts_to_rgb(tmp_path):
    a = np.zeros((20, 20, 4), np.uint8)
    a[..., 3] = 0
    write_image(Image.fromarray(a, "RGBA"), tmp_path / "a.jpg")
    assert (np.asarray(read_image(tmp_path / "a.jpg").image) > 250).all()  # white, not black


# ------------------------------------------------------------------------------------------------
# Naming and inputs


def test_output_path_rules(tmp_path):
    src = tmp_path / "in" / "me.jpg"
    assert output_path(src, None) == tmp_path / "in" / "me_edited.jpg"
    assert output_path(src, None, suffix="_sweep") == tmp_path / "in" / "me_sweep.jpg"
    assert output_path(src, tmp_path / "out") == tmp_path / "out" / "me.jpg"
    assert output_path(src, tmp_path / "out", "_sweep", "png") == (
        tmp_path / "out" / "me_sweep.png"
    )
    assert output_path(tmp_path / "a.gif", tmp_path / "out") == tmp_path / "out" / "a.png"
    assert output_path(tmp_path / "a.JPG", None) == tmp_path / "a_edited.JPG"


def test_output_path_never_the_input(tmp_path):
    src = tmp_path / "me.jpg"
    with pytest.raises(OutputError, match="would overwrite the input"):
        output_path(src, tmp_path)
    assert output_path(src, tmp_path, suffix="_2") == tmp_path / "me_2.jpg"
    src.write_bytes(b"x")
    with pytest.raises(OutputError, match="-o .* is a file; -o takes a folder"):
        output_path(tmp_path / "other.jpg", src)
    with pytest.raises(OutputError, match="-o takes a folder, not a file name"):
        output_path(src, tmp_path / "result.png")


def test_collect_inputs(tmp_path):
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    for name in ("b.png", "a.JPG", "c.webp", ".hidden.jpg", "notes.txt", "sub/d.jpg"):
        (d / name).write_bytes(b"x")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    (tmp_path / "one.jpg").write_bytes(b"x")
    args = [
        str(d),
        str(tmp_path / "one.jpg"),
        str(d / "*.png"),  # b.png again: de-duplicated
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "docs"),
        str(tmp_path / "*.tiff"),
        str(d / "*.txt"),
    ]
    paths, problems = collect_inputs(args)
    assert paths == [d / "a.JPG", d / "b.png", d / "c.webp", tmp_path / "one.jpg"]
    assert problems == [
        (args[3], "no such file"),
        (args[4], "folder has no images (.jpg .jpeg .png .webp .bmp .tif .tiff .gif)"),
        (args[5], "pattern matched nothing"),
        (args[6], "pattern matched no images (.jpg .jpeg .png .webp .bmp .tif .tiff .gif)"),
    ]


# ------------------------------------------------------------------------------------------------
# Tensors


def test_pil_tensor_round_trip():
    im = _pattern()
    t = pil_to_tensor(im)
    assert t.shape == (1, 3, 20, 24) and t.dtype == torch.float32
    assert t.min() >= 0.0 and t.max() <= 1.0
    assert float(t[0, 0, 0, 1]) == pytest.approx(10 / 255)
    assert np.array_equal(np.asarray(tensor_to_pil(t)), np.asarray(im))
    assert np.array_equal(np.asarray(tensor_to_pil(t[0])), np.asarray(im))


def test_tensor_to_pil_clamps_and_rounds():
    t = torch.tensor([-0.5, 0.2, 1.5, 0.999]).reshape(1, 1, 4).expand(3, 1, 4)
    assert np.asarray(tensor_to_pil(t))[0].tolist() == [[0] * 3, [51] * 3, [255] * 3, [255] * 3]
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4, 4\)"):
        tensor_to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        tensor_to_pil(torch.full((3, 2, 2), float("nan")))


def test_photo_size_and_fields(tmp_path):
    _pattern(30, 18).save(tmp_path / "a.png")
    photo = read_image(str(tmp_path / "a.png"))
    assert isinstance(photo, Photo)
    assert photo.size == (30, 18) and photo.path == tmp_path / "a.png" and photo.format == "PNG"
    assert photo.exif is None and photo.icc_profile is None


def test_multi_picture_jpeg_reads_as_jpeg(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in (RED, BLUE)]
    frames[0].save(tmp_path / "phone.jpg", format="MPO", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "phone.jpg") as im:
        assert im.format == "MPO"
    photo = read_image(tmp_path / "phone.jpg")
    assert photo.format == "JPEG" and _is(np.asarray(photo.image)[10, 10], RED, 8)


def test_webp_exif_is_written_into_jpeg(tmp_path):
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    _pattern().save(tmp_path / "in.webp", exif=exif.tobytes(), lossless=True)
    photo = read_image(tmp_path / "in.webp")
    assert photo.exif.startswith(b"Exif\x00\x00")
    write_image(photo.image, tmp_path / "out.jpg", like=photo)
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.getexif()[0x010F] == "TestCam"

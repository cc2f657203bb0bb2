import math

import numpy as np
import pytest
import torch
from PIL import Image

from conceptvae import grids
from conceptvae.errors import DataError, OutputError
from conceptvae.grids import (
    format_strength,
    image_grid,
    interpolate,
    interpolate_grid,
    lerp,
    parse_sweep,
    save_gif,
    slerp,
    strip,
)


def _latents(n=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def _solid(colours, h=16, w=16):
    """(N, 3, H, W) tensor of solid colours given as 0..255 RGB tuples (exact in uint8)."""
    c = torch.tensor(colours, dtype=torch.float32) / 255.0
    return c[:, :, None, None].expand(-1, -1, h, w).contiguous()


# ------------------------------------------------------------------------------------------------
# Interpolation


@pytest.mark.parametrize("fn", [lerp, slerp])
def test_endpoints_exact(fn):
    a, b = _latents(2, 16, seed=1)
    assert torch.allclose(fn(a, b, 0.0), a, atol=1e-6, rtol=0)
    assert torch.allclose(fn(a, b, 1.0), b, atol=1e-6, rtol=0)
    batch_a, batch_b = _latents(3, 16, seed=2), _latents(3, 16, seed=3)
    out = fn(batch_a, batch_b, torch.tensor([0.0, 0.5, 1.0]))
    assert out.shape == (3, 3, 16) and out.dtype == torch.float32
    assert torch.allclose(out[0], batch_a, atol=1e-6, rtol=0)
    assert torch.allclose(out[2], batch_b, atol=1e-6, rtol=0)


def test_lerp_midpoint_is_mean():
    a, b = _latents(2, 8, seed=4)
    assert torch.allclose(lerp(a, b, 0.5), (a + b) / 2, atol=1e-6)
    assert lerp(a, b, [0.25, 0.5]).shape == (2, 8)


def test_slerp_orthogonal_unit_vectors():
    a, b = torch.zeros(5), torch.zeros(5)
    a[0], b[3] = 1.0, 1.0
    m = slerp(a, b, 0.5)
    assert math.isclose(float(m.norm()), 1.0, abs_tol=1e-6)
    assert math.isclose(float(m @ a), float(m @ b), abs_tol=1e-6)
    assert math.isclose(float(m @ a), math.cos(math.pi / 4), abs_tol=1e-6)
    # Norms are interpolated linearly: 1 -> 3 gives 2 at the middle.
    assert math.isclose(float(slerp(a, 3 * b, 0.5).norm()), 2.0, abs_tol=1e-6)


def test_slerp_falls_back_to_lerp():
    a = _latents(1, 8, seed=5)[0]
    for b in (a * 2, -a, torch.zeros(8), a + 1e-7):  # parallel, opposite, zero, tiny angle
        t = torch.tensor([0.0, 0.3, 1.0])
        assert torch.allclose(slerp(a, b, t), lerp(a, b, t), atol=1e-6)


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_interpolate_shapes_and_endpoints(method):
    a, b = _latents(2, 8, seed=6)
    path = interpolate(a, b, 7, method)
    assert path.shape == (7, 8)
    assert torch.allclose(path[0], a, atol=1e-6, rtol=0)
    assert torch.allclose(path[-1], b, atol=1e-6, rtol=0)
    assert interpolate(_latents(3, 8), _latents(3, 8, seed=9), 4, method).shape == (4, 3, 8)


def test_interpolate_rejects_bad_steps_and_method():
    a, b = _latents(2, 4)
    with pytest.raises(ValueError, match="at least 2"):
        interpolate(a, b, 1)
    with pytest.raises(ValueError, match="'slerp' or 'lerp'"):
        interpolate(a, b, 3, "cubic")


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_interpolate_grid(method):
    corners = _latents(4, 8, seed=7)
    g = interpolate_grid(corners, 3, 5, method)
    assert g.shape == (3, 5, 8)
    for (i, j), k in zip([(0, 0), (0, -1), (-1, 0), (-1, -1)], range(4)):
        assert torch.allclose(g[i, j], corners[k], atol=1e-6, rtol=0)
    top = interpolate(corners[0], corners[1], 5, method)
    bottom = interpolate(corners[2], corners[3], 5, method)
    assert torch.allclose(g[0], top, atol=1e-6, rtol=0)
    assert torch.allclose(g[-1], bottom, atol=1e-6, rtol=0)
    assert torch.allclose(g[:, 0], interpolate(corners[0], corners[2], 3, method), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Sweeps


def test_parse_sweep_forms():
    name, v = parse_sweep("Smiling=-2:2:5")
    assert name == "Smiling"
    np.testing.assert_array_equal(v, [-2, -1, 0, 1, 2])
    name, v = parse_sweep(" Smiling = -1, 0, 0.5, 2 ")
    assert name == "Smiling"
    np.testing.assert_array_equal(v, [-1, 0, 0.5, 2])
    assert parse_sweep("5_o_Clock_Shadow=1.5")[0] == "5_o_Clock_Shadow"
    np.testing.assert_array_equal(parse_sweep("Male=3:3:1")[1], [3.0])


@pytest.mark.parametrize(
    "text, why",
    [
        ("Smiling", "no '='"),
        ("Smiling=", "no values"),
        ("=1,2", "not an attribute name"),
        ("Smi ling=1", "not an attribute name"),
        ("Smiling=-2:2", "START:STOP:COUNT"),
        ("Smiling=-2:2:0", "COUNT must be 1..64"),
        ("Smiling=-2:2:65", "COUNT must be 1..64"),
        ("Smiling=-2:2:2.5", "not a whole number"),
        ("Smiling=1,x", "'x' is not a number"),
        ("Smiling=1,,2", "is not a number"),
        ("Smiling=nan", "not a finite number"),
        ("Smiling=" + ",".join(["1"] * 65), "1..64 values"),
    ],
)
def test_parse_sweep_errors(text, why):
    with pytest.raises(DataError) as e:
        parse_sweep(text)
    msg = str(e.value)
    assert why in msg
    assert "NAME=START:STOP:COUNT or NAME=V1,V2,..." in msg
    assert "\n" not in msg


def test_format_strength():
    assert [format_strength(v) for v in (-2, 0.5, 0, -0.0, 1.25, 0.1 + 0.2)] == [
        "-2",
        "+0.5",
        "0",
        "0",
        "+1.25",
        "+0.3",
    ]


# ------------------------------------------------------------------------------------------------
# Pictures

COLOURS = [(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 250, 0), (0, 128, 128), (128, 0, 128)]


def _box(text):
    return grids._text_box(text)


def test_image_grid_layout_and_pixels():
    cells = _solid(COLOURS).reshape(2, 3, 3, 16, 16)
    pad, cell, gap = 3, 32, grids.LABEL_GAP
    plain = image_grid(cells, cell=cell, pad=pad)
    assert plain.size == (pad + 3 * cell + 2 * pad + pad, pad + 2 * cell + pad + pad)

    rows, cols = ["top", "bottom"], [-1, 0, 0.5]
    g = image_grid(cells, row_labels=rows, col_labels=cols, cell=cell, pad=pad)
    left = max(_box(s)[2] - _box(s)[0] for s in rows) + gap
    top = max(_box(s)[3] for s in ("-1", "0", "+0.5")) + gap
    assert left > gap and top > gap
    assert g.size == (plain.width + left, plain.height + top)

    a = np.asarray(g)
    for k, colour in enumerate(COLOURS):
        i, j = divmod(k, 3)
        x, y = pad + left + j * (cell + pad), pad + top + i * (cell + pad)
        block = a[y : y + cell, x : x + cell]
        assert (block == colour).all(), (i, j)
        assert (a[y - 1, x : x + cell] == 255).all() and (a[y : y + cell, x - 1] == 255).all()
    # Text sits in the label bands, dark on white.
    assert (a[pad : pad + top - gap, pad + left :].min(axis=-1) < 100).any()
    assert (a[pad + top :, pad : pad + left - gap].min(axis=-1) < 100).any()
    # The same grid from a nested list of PIL images, and from (N, 3, H, W) with cols.
    pil = [[Image.new("RGB", (16, 16), c) for c in COLOURS[r * 3 : r * 3 + 3]] for r in range(2)]
    kw = dict(row_labels=rows, col_labels=cols, cell=cell, pad=pad)
    assert np.array_equal(np.asarray(image_grid(pil, **kw)), a)
    assert np.array_equal(np.asarray(image_grid(_solid(COLOURS), cols=3, **kw)), a)


def test_image_grid_title_and_wide_labels():
    cells = _solid(COLOURS[:2])
    title = "a title wider than two tiny cells"
    g = image_grid(cells, col_labels=["Smiling", "Eyeglasses"], title=title, pad=2)
    tb = _box(title)
    label_w = _box("Eyeglasses")[2] - _box("Eyeglasses")[0]
    assert label_w > 16  # the columns widen to fit their labels
    assert g.width == max(2 + 2 * label_w + 2 + 2, tb[2] - tb[0] + 4)
    top = tb[3] + grids.LABEL_GAP + max(_box("Smiling")[3], _box("Eyeglasses")[3]) + grids.LABEL_GAP
    assert g.height == 2 + top + 16 + 2
    a = np.asarray(g)
    x = 2 + (label_w - 16) // 2
    assert (a[2 + top : 2 + top + 16, x : x + 16] == COLOURS[0]).all()


def test_image_grid_lanczos_for_non_multiple_and_errors():
    g = image_grid(_solid(COLOURS[:1]), cell=24, pad=0)
    assert g.size == (24, 24)
    assert (np.asarray(g) == COLOURS[0]).all()  # a solid colour survives LANCZOS
    with pytest.raises(ValueError, match="row_labels has 1 labels for 2 rows"):
        image_grid(_solid(COLOURS[:4]).reshape(2, 2, 3, 16, 16), row_labels=["x"])
    with pytest.raises(ValueError, match="one size"):
        image_grid([[Image.new("RGB", (8, 8)), Image.new("RGB", (9, 8))]])


def test_strip_labels_strengths():
    s = strip(_solid(COLOURS[:3]), [-2, 0, 2], cell=16, pad=1)
    top = max(_box(t)[3] for t in ("-2", "0", "+2")) + grids.LABEL_GAP
    assert s.size == (1 + 3 * 16 + 2 + 1, 1 + top + 16 + 1)
    assert (np.asarray(s)[1 + top, 1 + 17] == COLOURS[1]).all()


def _frames():
    return [Image.new("RGB", (12, 10), c) for c in COLOURS[:4]]


@pytest.mark.parametrize("pingpong, expected", [(False, 4), (True, 6)])
def test_save_gif_round_trip(tmp_path, pingpong, expected):
    path = save_gif(_frames(), tmp_path / "anim.gif", pingpong=pingpong, duration_ms=100)
    assert path == tmp_path / "anim.gif"
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == expected
        assert im.info["duration"] == 100 and im.info["loop"] == 0
        assert (np.asarray(im.convert("RGB")) == COLOURS[0]).all()
        if pingpong:
            im.seek(4)  # a b c d c b: frame 4 is c
            assert (np.asarray(im.convert("RGB")) == COLOURS[2]).all()
    assert [p.name for p in tmp_path.iterdir()] == ["anim.gif"]


def test_save_gif_refuses_and_cleans_up(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="at least one frame"):
        save_gif([], tmp_path / "x.gif")
    with pytest.raises(OutputError, match=r"\.gif name"):
        save_gif(_frames(), tmp_path / "x.png")

    def broken(self, fp, *args, **kwargs):
        fp.write(b"GIF89a partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken)
    with pytest.raises(OutputError, match="No space left on device"):
        save_gif(_frames(), tmp_path / "x.gif")
    assert list(tmp_path.iterdir()) == []

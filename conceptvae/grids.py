"""Latent interpolation and the pictures made from it: grids, strips and animated GIFs.

Pure functions with no model inside: the editing pipeline encodes, calls these on latents,
decodes, and hands the images back here to be laid out. Latents are float32 (N, D) tensors;
images are float32 NCHW tensors in [0, 1] (or PIL images, at the output edge).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Sequence
from numbers import Real
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from conceptvae.errors import DataError, OutputError
from conceptvae.images import check_output_file, tensor_to_pil, to_rgb, write_atomically

SLERP_MIN_ANGLE = 1e-4  # radians; below it (or this close to pi) slerp falls back to lerp
MAX_SWEEP = 64  # most values one sweep may ask for
LABEL_SIZE = 12  # label font size in px (Pillow >= 10.1; older Pillow uses its bitmap font)
LABEL_GAP = 4  # px between a label band and the images

_TINY_NORM = 1e-12
_SWEEP_FORM = "NAME=START:STOP:COUNT or NAME=V1,V2,... (e.g. Smiling=-2:2:5)"
_NAME = re.compile(r"[A-Za-z0-9_]*[A-Za-z][A-Za-z0-9_]*")

Scalar = float | int
TValues = Scalar | Sequence[Scalar] | np.ndarray | torch.Tensor
Label = str | Scalar


# ------------------------------------------------------------------------------------------------
# Interpolation


def _prepare(
    a: torch.Tensor, b: torch.Tensor, t: TValues
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Broadcast a and b to one (D,) or (B, D) shape; t as a tensor shaped to broadcast with them.

    t comes back 0-d for a scalar, else (T, 1) or (T, 1, 1), in float64 on a's device.
    """
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    try:
        a, b = torch.broadcast_tensors(a, b)
    except RuntimeError:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        ) from None
    if a.ndim not in (1, 2):
        raise ValueError(f"a and b must be (D,) or (B, D) latents, got shape {tuple(a.shape)}")
    tt = torch.as_tensor(t, dtype=torch.float64)
    if tt.ndim > 1:
        raise ValueError(f"t must be a number or a 1-D sequence, got shape {tuple(tt.shape)}")
    if not torch.isfinite(tt).all():
        raise ValueError("t has NaN or infinite values")
    if tt.ndim == 1:
        tt = tt.reshape(-1, *([1] * a.ndim))
    return a, b, tt.to(a.device)


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # float64 keeps the endpoints exact after casting back; MPS has no float64.
    return x.dtype if x.device.type == "mps" else torch.float64


def lerp(a: torch.Tensor, b: torch.Tensor, t: TValues) -> torch.Tensor:
    """Linear interpolation ``(1 - t) a + t b``.

    ``a`` and ``b`` are (D,) or (B, D) latents (broadcast against each other). ``t`` is a number,
    giving the shape of ``a``, or a 1-D sequence/tensor of T values, giving (T, D) or (T, B, D).
    ``t`` outside [0, 1] extrapolates. Endpoints are exact: ``lerp(a, b, 0) == a`` and
    ``lerp(a, b, 1) == b``. Returns ``a``'s dtype.
    """
    a, b, tt = _prepare(a, b, t)
    work = _work_dtype(a)
    out = torch.lerp(a.to(work), b.to(work), tt.to(work))
    return out.to(a.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, t: TValues) -> torch.Tensor:
    """Spherical interpolation of raw (unnormalised) latents.

    The direction moves along the great circle from ``a`` to ``b`` (angle ``t * omega``) and the
    norm goes linearly from ``|a|`` to ``|b|``, so the path keeps the norms VAE latents have
    instead of cutting through the low-norm middle as :func:`lerp` does. Endpoints are exact.
    Where the angle is under ``SLERP_MIN_ANGLE`` (1e-4 rad), within that of pi (opposite
    vectors: no unique great circle), or a vector is zero, that row falls back to :func:`lerp`.

    Shapes as for :func:`lerp`: ``a``, ``b`` (D,) or (B, D); ``t`` a number -> ``a``'s shape,
    T values -> (T, D) or (T, B, D).
    """
    a, b, tt = _prepare(a, b, t)
    work = _work_dtype(a)
    a_, b_, t_ = a.to(work), b.to(work), tt.to(work)
    na = a_.norm(dim=-1, keepdim=True)  # (..., 1)
    nb = b_.norm(dim=-1, keepdim=True)
    ua = a_ / na.clamp_min(_TINY_NORM)
    ub = b_ / nb.clamp_min(_TINY_NORM)
    # 2 atan2(|ua - ub|, |ua + ub|) is accurate near 0 and near pi, where acos(dot) is not.
    omega = 2 * torch.atan2(
        (ua - ub).norm(dim=-1, keepdim=True), (ua + ub).norm(dim=-1, keepdim=True)
    )
    use = (
        (na > _TINY_NORM)
        & (nb > _TINY_NORM)
        & (omega > SLERP_MIN_ANGLE)
        & (omega < math.pi - SLERP_MIN_ANGLE)
    )
    sin_omega = torch.where(use, torch.sin(omega), torch.ones_like(omega))
    direction = (torch.sin((1 - t_) * omega) * ua + torch.sin(t_ * omega) * ub) / sin_omega
    spherical = ((1 - t_) * na + t_ * nb) * direction
    out = torch.where(use, spherical, torch.lerp(a_, b_, t_))
    return out.to(a.dtype)


_METHODS = {"slerp": slerp, "lerp": lerp}


def _method(method: str):
    try:
        return _METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"method must be 'slerp' or 'lerp', got {method!r}") from None


def _check_steps(name: str, steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(steps).__name__}")
    if steps < 2:
        raise ValueError(f"{name} must be at least 2 (both endpoints are included), got {steps}")


def interpolate(
    a: torch.Tensor, b: torch.Tensor, steps: int, method: str = "slerp"
) -> torch.Tensor:
    """``steps`` evenly spaced points from ``a`` to ``b``, both endpoints included (exactly).

    ``a``, ``b``: (D,) -> (steps, D); (B, D) -> (steps, B, D). ``method`` is "slerp" (default)
    or "lerp". Raises ValueError when ``steps`` < 2.
    """
    fn = _method(method)
    _check_steps("steps", steps)
    t = torch.linspace(0.0, 1.0, int(steps), dtype=torch.float64)
    t[0], t[-1] = 0.0, 1.0
    return fn(a, b, t)


def interpolate_grid(
    corners: torch.Tensor, rows: int, cols: int, method: str = "slerp"
) -> torch.Tensor:
    """A (rows, cols, D) grid of latents spanned by four corners.

    ``corners`` is (4, D): top-left, top-right, bottom-left, bottom-right. The top and bottom
    edges are interpolated across ``cols`` points, then each column from top to bottom across
    ``rows`` points, so the corners are exact and the top and bottom rows equal
    ``interpolate(corners[0], corners[1], cols)`` and ``interpolate(corners[2], corners[3],
    cols)``. ``rows`` and ``cols`` must be at least 2.
    """
    if not isinstance(corners, torch.Tensor):
        raise TypeError(f"corners must be a torch tensor, got {type(corners).__name__}")
    if corners.ndim != 2 or corners.shape[0] != 4:
        raise ValueError(
            "corners must be (4, D): top-left, top-right, bottom-left, bottom-right; "
            f"got shape {tuple(corners.shape)}"
        )
    _check_steps("rows", rows)
    _check_steps("cols", cols)
    top = interpolate(corners[0], corners[1], cols, method)  # (cols, D)
    bottom = interpolate(corners[2], corners[3], cols, method)  # (cols, D)
    return interpolate(top, bottom, rows, method)  # (rows, cols, D)


# ------------------------------------------------------------------------------------------------
# Sweeps


def parse_sweep(text: str) -> tuple[str, np.ndarray]:
    """Parse an attribute sweep: ``"Smiling=-2:2:5"`` -> ``("Smiling", array([-2, -1, 0, 1, 2]))``.

    Two forms: ``NAME=START:STOP:COUNT`` (COUNT values from START to STOP inclusive, as
    ``np.linspace``) and ``NAME=V1,V2,...`` (the values as given). NAME is letters, digits and
    underscores (``5_o_Clock_Shadow``). 1 to 64 values. Returns float64 strengths. Raises
    :class:`DataError` with a one-line message showing the expected form.
    """

    def bad(why: str) -> DataError:
        return DataError(f"bad sweep {text!r}: {why}; expected {_SWEEP_FORM}")

    if not isinstance(text, str):
        raise DataError(f"bad sweep {text!r}: not text; expected {_SWEEP_FORM}")
    name, eq, spec = text.partition("=")
    name, spec = name.strip(), spec.strip()
    if not eq:
        raise bad("no '='")
    if not _NAME.fullmatch(name):
        raise bad(f"{name!r} is not an attribute name (letters, digits, underscores)")
    if not spec:
        raise bad("no values after '='")

    def number(s: str, what: str) -> float:
        try:
            v = float(s)
        except ValueError:
            raise bad(f"{what} {s.strip()!r} is not a number") from None
        if not math.isfinite(v):
            raise bad(f"{what} {s.strip()!r} is not a finite number")
        return v

    if ":" in spec:
        parts = spec.split(":")
        if len(parts) != 3:
            raise bad(f"a range needs exactly START:STOP:COUNT, got {len(parts)} parts")
        start, stop = number(parts[0], "START"), number(parts[1], "STOP")
        try:
            count = int(parts[2])
        except ValueError:
            raise bad(f"COUNT {parts[2].strip()!r} is not a whole number") from None
        if not 1 <= count <= MAX_SWEEP:
            raise bad(f"COUNT must be 1..{MAX_SWEEP}, got {count}")
        values = np.linspace(start, stop, count)
    else:
        items = spec.split(",")
        if not 1 <= len(items) <= MAX_SWEEP:
            raise bad(f"the list must have 1..{MAX_SWEEP} values, got {len(items)}")
        values = np.array([number(s, "value") for s in items], dtype=np.float64)
    return name, values


def format_strength(value: float) -> str:
    """A strength as a compact label: -2 -> "-2", 0.5 -> "+0.5", 0 -> "0", 0.30000000000000004
    -> "+0.3" (6 significant digits)."""
    v = float(value)
    if v == 0:
        return "0"  # also -0.0
    return f"{v:+g}"


# ------------------------------------------------------------------------------------------------
# Pictures


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=LABEL_SIZE)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def _text_box(text: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of ``text`` drawn at the origin with the label font."""
    if not text:
        return (0, 0, 0, 0)
    return tuple(int(v) for v in _DRAW.textbbox((0, 0), text, font=_font()))


_DRAW = ImageDraw.Draw(Image.new("1", (1, 1)))


def _label_text(label: Label) -> str:
    if isinstance(label, str):
        return label
    if isinstance(label, Real | np.number) and not isinstance(label, bool):
        return format_strength(float(label))
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        return format_strength(float(label))
    raise TypeError(f"a label must be text or a number, got {type(label).__name__}")


def _labels(labels: Sequence[Label] | np.ndarray | torch.Tensor | None, n: int, what: str):
    if labels is None:
        return None
    if isinstance(labels, str):
        raise TypeError(f"{what} must be a sequence of labels, not one string")
    texts = [_label_text(x) for x in labels]
    if len(texts) != n:
        raise ValueError(f"{what} has {len(texts)} labels for {n} {what.split('_')[0]}s")
    return texts


def _cells_from(images, cols: int | None) -> list[list[Image.Image | None]]:
    """Any accepted ``images`` form as rows of PIL images (None for an empty cell)."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 5 and images.shape[2] == 3:
            if cols is not None:
                raise ValueError("cols= is only for (N, 3, H, W) tensors or flat lists")
            return [[tensor_to_pil(im) for im in row] for row in images]
        if images.ndim == 4 and images.shape[1] == 3:
            flat: list[Image.Image | None] = [tensor_to_pil(im) for im in images]
        else:
            raise ValueError(
                f"images must be (R, C, 3, H, W) or (N, 3, H, W), got shape {tuple(images.shape)}"
            )
    elif isinstance(images, Sequence) and not isinstance(images, str):
        if all(x is None or isinstance(x, Image.Image) for x in images):
            flat = list(images)
        else:
            if cols is not None:
                raise ValueError("cols= is only for (N, 3, H, W) tensors or flat lists")
            rows = []
            for row in images:
                if isinstance(row, Image.Image) or not isinstance(row, Sequence):
                    raise TypeError("images must be a list of PIL images or a list of such lists")
                for x in row:
                    if x is not None and not isinstance(x, Image.Image):
                        raise TypeError(f"a grid cell must be a PIL image, got {type(x).__name__}")
                rows.append(list(row))
            return rows
    else:
        raise TypeError(
            "images must be a tensor (R, C, 3, H, W) or (N, 3, H, W), or a list of PIL images, "
            f"got {type(images).__name__}"
        )
    if not flat:
        return []
    if cols is None:
        cols = len(flat)
    if isinstance(cols, bool) or not isinstance(cols, int) or cols < 1:
        raise ValueError(f"cols must be a positive int, got {cols!r}")
    return [flat[i : i + cols] for i in range(0, len(flat), cols)]


def _cell_size(size: tuple[int, int], cell: int | None) -> tuple[int, int]:
    w, h = size
    if cell is None:
        return w, h
    return max(1, round(w * cell / h)), cell


def _resize(im: Image.Image, target: tuple[int, int]) -> Image.Image:
    if im.size == target:
        return im
    w, h = im.size
    tw, th = target
    exact = th % h == 0 and tw % w == 0 and th // h == tw // w
    return im.resize(target, Image.Resampling.NEAREST if exact else Image.Resampling.LANCZOS)


def image_grid(
    images,
    *,
    cols: int | None = None,
    row_labels: Sequence[Label] | None = None,
    col_labels: Sequence[Label] | None = None,
    title: str | None = None,
    cell: int | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Lay images out in a labelled grid; returns an RGB PIL image.

    ``images`` is a float tensor (R, C, 3, H, W) in [0, 1]; or (N, 3, H, W) laid out ``cols``
    per row (default: one row; a short last row is left blank); or a list of rows of PIL images
    (None or a short row leaves cells blank); or a flat list of PIL images with ``cols``. All
    images must have one size. ``cell`` resizes each image to that height in px (width keeps the
    aspect): NEAREST when it is a whole multiple of H (crisp pixels), else LANCZOS.

    Labels are text or numbers (numbers as :func:`format_strength`: "-2", "+0.5", "0"), drawn
    in the default font at ``LABEL_SIZE`` px: ``col_labels`` in a band above the columns,
    ``row_labels`` in a band left of the rows, ``title`` in a band on top. Labels never overlap
    images. With ``pad`` p, label boxes from ``textbbox`` (right, bottom at the origin) and
    ``LABEL_GAP`` g, the layout is::

        col_w = max(cell_w, widest col label)        row_h = max(cell_h, tallest row label)
        left  = widest row label + g  (0 without row labels)
        top   = (title bottom + g) + (lowest col label bottom + g)   (each 0 when absent)
        width = max(p + left + C col_w + (C - 1) p + p, title width + 2 p)
        height = p + top + R row_h + (R - 1) p + p

    and each image is centred in its col_w x row_h slot.
    """
    rows = _cells_from(images, cols)
    present = [im for row in rows for im in row if im is not None]
    if not present:
        raise ValueError("image_grid needs at least one image")
    sizes = {im.size for im in present}
    if len(sizes) > 1:
        raise ValueError(f"all images in a grid must have one size, got {sorted(sizes)}")
    if cell is not None and (isinstance(cell, bool) or not isinstance(cell, int) or cell < 1):
        raise ValueError(f"cell must be a positive int (px) or None, got {cell!r}")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    bg = tuple(background)
    if len(bg) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in bg):
        raise ValueError(
            f"background must be an (R, G, B) tuple of ints 0..255, got {background!r}"
        )

    n_rows, n_cols = len(rows), max(len(row) for row in rows)
    rlab = _labels(row_labels, n_rows, "row_labels")
    clab = _labels(col_labels, n_cols, "col_labels")
    cell_w, cell_h = _cell_size(sizes.pop(), cell)

    rboxes = [_text_box(s) for s in rlab] if rlab else []
    cboxes = [_text_box(s) for s in clab] if clab else []
    tbox = _text_box(title) if title else None
    col_w = max([cell_w] + [r - l for l, _, r, _ in cboxes])
    row_h = max([cell_h] + [b - t for _, t, _, b in rboxes])
    left = max(r - l for l, _, r, _ in rboxes) + LABEL_GAP if rboxes else 0
    title_h = tbox[3] + LABEL_GAP if tbox else 0
    col_h = max(b for *_, b in cboxes) + LABEL_GAP if cboxes else 0
    top = title_h + col_h
    width = pad + left + n_cols * col_w + (n_cols - 1) * pad + pad
    if tbox:
        width = max(width, tbox[2] - tbox[0] + 2 * pad)
    height = pad + top + n_rows * row_h + (n_rows - 1) * pad + pad

    canvas = Image.new("RGB", (width, height), bg)
    draw = ImageDraw.Draw(canvas)
    ink = (0, 0, 0) if sum(bg) >= 3 * 128 else (255, 255, 255)
    font = _font()

    def slot(i: int, j: int) -> tuple[int, int]:
        return pad + left + j * (col_w + pad), pad + top + i * (row_h + pad)

    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            if im is None:
                continue
            x, y = slot(i, j)
            canvas.paste(
                _resize(to_rgb(im), (cell_w, cell_h)),
                (x + (col_w - cell_w) // 2, y + (row_h - cell_h) // 2),
            )
    if tbox:
        l, _, r, _ = tbox
        draw.text(((width - (r - l)) // 2 - l, pad), title, fill=ink, font=font)
    for j, (text, (l, _, r, _)) in enumerate(zip(clab or [], cboxes)):
        x, _ = slot(0, j)
        draw.text((x + (col_w - (r - l)) // 2 - l, pad + title_h), text, fill=ink, font=font)
    widest = left - LABEL_GAP
    for i, (text, (l, t, r, b)) in enumerate(zip(rlab or [], rboxes)):
        _, y = slot(i, 0)
        draw.text(
            (pad + widest - (r - l) - l, y + (row_h - (b - t)) // 2 - t), text, fill=ink, font=font
        )
    return canvas


def strip(
    images,
    labels: Sequence[Label] | np.ndarray | torch.Tensor | None = None,
    *,
    title: str | None = None,
    cell: int | None = None,
    pad: int = 2,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """One row of images (an attribute sweep) with a label above each: see :func:`image_grid`.

    ``images`` is (N, 3, H, W) in [0, 1] or a list of N PIL images; ``labels`` N strings or
    strengths (``[-2, 0, 0.5]`` -> "-2", "0", "+0.5").
    """
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"strip takes (N, 3, H, W) images, got shape {tuple(images.shape)}")
        images = images[None]
    else:
        images = [list(images)]
    return image_grid(
        images, col_labels=labels, title=title, cell=cell, pad=pad, background=background
    )


def save_gif(
    frames: Sequence[Image.Image] | torch.Tensor,
    path: str | os.PathLike,
    *,
    duration_ms: int = 120,
    pingpong: bool = True,
    loop: int | None = 0,
) -> Path:
    """Write ``frames`` as an animated GIF, atomically; return the path.

    ``frames`` are PIL images of one size (or an (N, 3, H, W) tensor in [0, 1]). ``pingpong``
    appends the middle frames reversed, so N frames play as 2N - 2 (N <= 2 unchanged) and the
    loop goes back and forth without repeating an end frame. ``loop`` 0 repeats forever, n
    repeats n times, None plays once. Each frame gets its own 256-colour palette; GIF stores
    durations in 1/100 s. Pillow merges consecutive identical frames (adding their durations).
    Raises ValueError for no frames or mixed sizes, :class:`OutputError` when ``path`` is not a
    .gif name, its folder is missing, or the write fails (nothing is left behind then).
    """
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (N, 3, H, W), got shape {tuple(frames.shape)}")
        frames = [tensor_to_pil(f) for f in frames]
    frames = list(frames)
    if not frames:
        raise ValueError("save_gif needs at least one frame, got none")
    for f in frames:
        if not isinstance(f, Image.Image):
            raise TypeError(f"frames must be PIL images, got {type(f).__name__}")
    sizes = {f.size for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"all frames must have one size, got {sorted(sizes)}")
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int) or duration_ms < 1:
        raise ValueError(f"duration_ms must be a positive int, got {duration_ms!r}")
    if loop is not None and (isinstance(loop, bool) or not isinstance(loop, int) or loop < 0):
        raise ValueError(f"loop must be an int >= 0 or None, got {loop!r}")

    path = Path(path)
    if path.suffix.lower() != ".gif":
        raise OutputError(f"cannot write {path} as a GIF: give it a .gif name")
    check_output_file(path)

    rgb = [to_rgb(f) for f in frames]
    if pingpong:
        rgb += rgb[-2:0:-1]
    params: dict[str, object] = {"duration": duration_ms, "optimize": False, "disposal": 2}
    if loop is not None:
        params["loop"] = loop

    def write(f) -> None:
        rgb[0].save(f, format="GIF", save_all=True, append_images=rgb[1:], **params)

    return write_atomically(path, write)

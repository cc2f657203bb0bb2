"""Image files at the edge of the pipeline: reading, writing, naming outputs, tensor <-> PIL.

Everything inside conceptvae works on float32 NCHW tensors in [0, 1]; PIL and numpy appear only
here. :func:`read_image` turns whatever a user hands in (a phone JPEG rotated by EXIF, a PNG with
transparency, a 16-bit scan, an animated GIF) into an upright RGB image, and refuses what it
cannot read with a one-line :class:`DataError` naming the file. :func:`write_image` writes
atomically and keeps the source photo's EXIF and colour profile.
"""

from __future__ import annotations

import glob
import os
import struct
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from conceptvae._fs import atomic_write
from conceptvae.errors import DataError, OutputError

if TYPE_CHECKING:
    import torch

MIN_SIDE = 16  # a shorter side below this cannot hold a face worth editing
# Pillow format names we read. Pillow's JPEG opener also returns "MPO" images: the multi-picture
# JPEGs many phones write; a Photo reports them as "JPEG".
READ_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
WRITE_FORMATS = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_EXIF_FORMATS = {"JPEG", "PNG", "WEBP"}  # TIFF would merge EXIF tags into its own directory
_ICC_FORMATS = {"JPEG", "PNG", "WEBP", "TIFF"}
_ORIENTATION = 0x0112
_READ_NAMES = "JPEG, PNG, WebP, BMP, TIFF and GIF"
# What a damaged file raises while its pixels are decoded ("image file is truncated" is an
# OSError; zlib.error comes from damaged PNG data).
DAMAGED = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    zlib.error,
    Image.DecompressionBombError,
)
# Leading bytes of the formats we read: a file that starts like one but cannot be parsed is
# damaged, not "not an image".
_MAGIC = {
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


@dataclass(frozen=True)
class Photo:
    """A photo as read from disk.

    Attributes:
        image: RGB, upright (EXIF orientation applied), 8 bits per channel.
        path: the file it came from.
        format: Pillow's format name: "JPEG", "PNG", "WEBP", "BMP", "TIFF" or "GIF".
        exif: the raw EXIF block (b"Exif\\0\\0..." for JPEG) with the orientation tag set to 1,
            since the pixels are now upright; None when the file has none (or is a TIFF, whose
            tags describe its own layout).
        icc_profile: the embedded ICC colour profile, or None (also when the profile is for
            another colour space, such as a CMYK JPEG's: it does not describe the RGB pixels).
    """

    image: Image.Image
    path: Path
    format: str
    exif: bytes | None = None
    icc_profile: bytes | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, after orientation."""
        return self.image.size


# ------------------------------------------------------------------------------------------------
# Modes


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB (returns ``im`` itself when it is already RGB).

    Transparency (RGBA, LA, PA, or a palette/grey/RGB image with a transparent colour) is
    composited on white. 16-bit modes (I;16, I;16B, I;16L) are scaled by 1/257 so 65535 -> 255;
    I and F (range unknown) are scaled the same way when they exceed 255 and kept otherwise; in
    both cases values are rounded, never clipped at 255. CMYK uses Pillow's conversion (Pillow
    reads every CMYK JPEG as Adobe-inverted, which is what Photoshop writes).
    """
    if im.mode == "RGB" and "transparency" not in im.info:
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        background.alpha_composite(im)
        return background.convert("RGB")
    return im.convert("RGB")


def unreadable_reason(path: str | os.PathLike, e: BaseException) -> str:
    """A short, human reason why ``path`` could not be read (``e`` is what reading raised)."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    if isinstance(e, Image.UnidentifiedImageError):
        return "not an image (cannot identify the file format)"
    if isinstance(e, FileNotFoundError):
        return "file not found"
    text = str(e).replace(str(path), "").strip(" :'\"") or type(e).__name__
    if "truncated" in text:
        return f"truncated image ({text})"
    if isinstance(e, Image.DecompressionBombError):
        return f"image too large ({text})"
    return f"cannot decode ({type(e).__name__}: {text})"


# ------------------------------------------------------------------------------------------------
# Reading


def read_image(path: str | os.PathLike) -> Photo:
    """Read an image file as an upright RGB :class:`Photo`.

    Reads JPEG, PNG, WebP, BMP, TIFF and GIF (the first frame of an animation). Applies the EXIF
    orientation and converts every mode with :func:`to_rgb`. Raises :class:`DataError` (one line:
    what is wrong, the file, what to do) for a missing file, a folder, an empty, non-image,
    truncated or damaged file, another image format, an image larger than
    ``PIL.Image.MAX_IMAGE_PIXELS`` (checked from the header, before decoding) or one whose shorter
    side is below 16 pixels.
    """
    path = Path(path)
    _check_file(path)
    try:
        with warnings.catch_warnings():
            # We refuse at MAX_IMAGE_PIXELS ourselves, with a better message than the warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path, formats=READ_FORMATS)
    except Image.DecompressionBombError:
        raise _too_large(path, _header_size(path)) from None
    except Image.UnidentifiedImageError:
        raise _unidentified(path) from None
    except OSError as e:
        raise DataError(
            f"cannot read {path}: {e.strerror or e}; check the file and its permissions"
        ) from None
    with im:
        fmt = "JPEG" if im.format == "MPO" else str(im.format)
        w, h = im.size
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and w * h > limit:
            raise _too_large(path, (w, h))
        if min(w, h) < MIN_SIDE:
            raise DataError(
                f"{path} is {w} x {h} pixels, too small to hold a face (the shorter side must "
                f"be at least {MIN_SIDE} px): use a larger photo"
            )
        try:
            im.seek(0)  # the first frame of an animation
            im.load()
        except DAMAGED as e:
            detail = str(e).replace(str(path), "").strip(" :'\"") or type(e).__name__
            raise DataError(
                f"{path} is a truncated or damaged {fmt} image ({detail}): "
                "re-export or download it again"
            ) from None
        exif, exif_ok = _exif_bytes(im)
        icc = _rgb_profile(im.info.get("icc_profile"))
        try:
            # A damaged EXIF block must not cost the photo: keep the stored orientation then.
            upright = ImageOps.exif_transpose(im) if exif_ok else im
            rgb = to_rgb(upright)
        except ValueError as e:  # a mode Pillow cannot convert (LAB, HSV TIFFs)
            raise DataError(
                f"cannot convert {path} (mode {im.mode}) to RGB ({e}): save it as 8-bit RGB first"
            ) from None
        if rgb is im:
            rgb = im.copy()  # detach from the file, which closes here
    rgb.info.clear()  # metadata lives on the Photo; write_image decides what to keep
    return Photo(image=rgb, path=path, format=fmt, exif=exif, icc_profile=icc)


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file: pass the image files inside it")
    if not path.exists():
        raise DataError(f"no such file: {path}: check the path")
    if not path.is_file():
        raise DataError(f"{path} is not a regular file: pass an image file")
    try:
        empty = path.stat().st_size == 0
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    if empty:
        raise DataError(
            f"{path} is empty (0 bytes): it is not an image; re-export or copy it again"
        )


def _too_large(path: Path, size: tuple[int, int] | None) -> DataError:
    limit = Image.MAX_IMAGE_PIXELS or 0
    if size is None:
        what = f"{path} is larger than the limit of {limit / 1e6:.1f} megapixels"
    else:
        w, h = size
        what = (
            f"{path} is {w} x {h} = {w * h / 1e6:.1f} megapixels, more than the limit of "
            f"{limit / 1e6:.1f}"
        )
    return DataError(f"{what}: downscale it first")


def _header_size(path: Path) -> tuple[int, int] | None:
    """Width and height from the header alone, bypassing Pillow's size check (nothing decoded).

    Used only to word the error for an image Pillow refused as a decompression bomb.
    """
    try:
        with open(path, "rb") as f:
            prefix = f.read(16)
            for name in READ_FORMATS:
                factory, accept = Image.OPEN[name]
                ok = True if accept is None else accept(prefix)
                if ok and not isinstance(ok, str):  # a str is Pillow's "almost" warning
                    f.seek(0)
                    with factory(f, str(path)) as im:
                        return im.size
    except Exception:  # the size is only for the message
        return None
    return None


def _unidentified(path: Path) -> DataError:
    """The most specific message for a file Pillow could not open as one of our formats."""
    try:
        with open(path, "rb") as f:
            prefix = f.read(512)
    except OSError as e:
        return DataError(f"cannot read {path}: {e.strerror or e}")
    for magic, name in _MAGIC.items():
        if prefix.startswith(magic):
            return DataError(
                f"{path} is a damaged {name} image (its header cannot be parsed): "
                "re-export or download it again"
            )
    if prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return DataError(
            f"{path} is a damaged WEBP image (its header cannot be parsed): "
            "re-export or download it again"
        )
    other = _foreign_format(path, prefix)
    if other:
        article = "an" if other[0] in "AEIOU" else "a"
        return DataError(
            f"{path} is {article} {other} image; conceptvae reads {_READ_NAMES}: convert it to "
            "one of these (e.g. JPEG or PNG)"
        )
    named = f" (despite its {path.suffix} name)" if path.suffix else ""
    if _looks_like_text(prefix):
        return DataError(f"{path} is a text file, not an image{named}: pass a photo")
    return DataError(
        f"{path} is not an image{named}: its content is no known image format; pass a "
        f"{_READ_NAMES} file"
    )


def _foreign_format(path: Path, prefix: bytes) -> str | None:
    """The name of an image format Pillow knows but we do not read, or None."""
    if prefix[4:8] == b"ftyp":  # ISO media: HEIC/HEIF from phones, AVIF
        brand = prefix[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1"):
            return "HEIC/HEIF"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:  # header only; nothing is decoded
                return str(im.format)
    except Exception:
        return None


def _looks_like_text(prefix: bytes) -> bool:
    if not prefix:
        return False
    try:
        text = prefix.decode("utf-8")
    except UnicodeDecodeError:
        # The 512 bytes may end inside a multi-byte character.
        try:
            text = prefix[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in text.lstrip("\ufeff"))


def _rgb_profile(icc: bytes | None) -> bytes | None:
    """``icc`` unless its header declares a colour space other than RGB: a CMYK or grey
    profile describes the file's own pixels, not the RGB ones we make of them, and written
    onto RGB output it would make colour-managed viewers show wrong colours (or refuse)."""
    if not icc:
        return None
    icc = bytes(icc)
    if len(icc) >= 20 and icc[16:20] != b"RGB ":  # bytes 16-19: the data colour space
        return None
    return icc


def _exif_bytes(im: Image.Image) -> tuple[bytes | None, bool]:
    """(the EXIF block to keep, with orientation reset to 1; whether the EXIF could be parsed)."""
    try:
        orientation = im.getexif().get(_ORIENTATION, 1)
    except Exception:
        return None, False
    raw = im.info.get("exif")
    if not raw or im.format == "TIFF":
        return None, True
    raw = bytes(raw)
    # WebP stores the block without the APP1 prefix; JPEG writes what it is given verbatim.
    if not raw.startswith(b"Exif\x00\x00"):
        raw = b"Exif\x00\x00" + raw
    if orientation == 1:
        return raw, True
    try:
        exif = Image.Exif()  # a copy: im.getexif() must keep the tag for exif_transpose
        exif.load(raw)
        exif[_ORIENTATION] = 1
        return exif.tobytes(), True
    except Exception:
        return None, True


# ------------------------------------------------------------------------------------------------
# Writing


def check_output_file(path: str | os.PathLike) -> Path:
    """``path`` as a file to write: its folder must exist and it must not be a folder itself
    (:class:`OutputError` saying which)."""
    path = Path(path)
    folder = path.parent
    if not folder.is_dir():
        if folder.exists():
            raise OutputError(f"{folder} is not a folder: choose another -o")
        raise OutputError(f"folder {folder} does not exist: create it or choose another -o")
    if path.is_dir():
        raise OutputError(f"{path} is a folder: choose another output name")
    return path


def write_image(
    image: Image.Image,
    path: str | os.PathLike,
    *,
    like: Photo | None = None,
    quality: int = 95,
) -> Path:
    """Write ``image`` to ``path`` atomically; return the path.

    The format follows the extension (.jpg .jpeg .png .webp .bmp .tif .tiff). The image is
    written as RGB (see :func:`to_rgb`). With ``like``, its EXIF (JPEG, PNG, WebP) and ICC
    profile (JPEG, PNG, WebP, TIFF) are kept. JPEG and WebP use ``quality`` (1-100); JPEG keeps
    full colour resolution (4:4:4). The file appears complete or not at all. Raises
    :class:`OutputError` for an unknown extension, a missing folder or a failed write.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"write_image takes a PIL image, got {type(image).__name__}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be between 1 and 100, got {quality}")
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        allowed = " ".join(WRITE_FORMATS)
        what = f"extension {path.suffix!r}" if path.suffix else "no extension"
        raise OutputError(f"cannot write {path}: {what}; use one of {allowed}")
    check_output_file(path)
    rgb = to_rgb(image)
    # Explicit None stops Pillow from copying a profile out of image.info behind our back.
    params: dict[str, object] = {"icc_profile": None}
    if fmt == "JPEG":
        params.update(quality=quality, subsampling=0)  # 4:4:4: edits live in colour detail too
    elif fmt == "WEBP":
        params.update(quality=quality)
    if like is not None:
        if like.exif and fmt in _EXIF_FORMATS:
            params["exif"] = like.exif
        if like.icc_profile and fmt in _ICC_FORMATS:
            params["icc_profile"] = like.icc_profile
    return write_atomically(path, lambda f: rgb.save(f, format=fmt, **params))


def write_atomically(path: Path, write: Callable[..., object]) -> Path:
    """:func:`~conceptvae._fs.atomic_write`, with a failed write (a full disk, no permission)
    raised as a one-line :class:`OutputError`; returns ``path``."""
    try:
        atomic_write(path, write)
    except OSError as e:
        raise OutputError(
            f"cannot write {path}: {e.strerror or e}; check that the folder is writable and has "
            "free space"
        ) from None
    return path


def output_path(
    input_path: str | os.PathLike,
    out: str | os.PathLike | None,
    suffix: str = "",
    ext: str | None = None,
) -> Path:
    """Where the CLI writes the result for ``input_path``.

    ``out`` is a folder: the output keeps the input's file name there, plus ``suffix``
    (``out/me_sweep.jpg``). With ``out`` None the output goes beside the input as
    ``NAME_edited.EXT`` (or ``NAME{suffix}.EXT`` when a suffix is given). ``ext`` (".png" or
    "png") replaces the extension; an input we cannot write (a GIF) becomes .png. Raises
    :class:`OutputError` when ``out`` is a file, or when the result would be the input itself.
    """
    src = Path(input_path)
    if ext is None:
        ext = src.suffix if src.suffix.lower() in WRITE_FORMATS else ".png"
    elif not ext.startswith("."):
        ext = "." + ext
    if ext.lower() not in WRITE_FORMATS:
        raise OutputError(f"cannot write {ext!r} files; use one of {' '.join(WRITE_FORMATS)}")
    if out is None:
        target = src.with_name(f"{src.stem}{suffix or '_edited'}{ext}")
    else:
        folder = Path(out)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"-o {folder} is a file; -o takes a folder: choose another")
        if not folder.exists() and folder.suffix.lower() in IMAGE_EXTENSIONS:
            raise OutputError(
                f"-o takes a folder, not a file name ({folder}): give a folder and each output "
                "keeps its input's name there"
            )
        target = folder / f"{src.stem}{suffix}{ext}"
    if _same_file(src, target):
        raise OutputError(
            f"the output for {src} would overwrite the input: choose another -o folder"
        )
    return target


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, case-insensitive file systems
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# Inputs


def collect_inputs(args: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand command-line arguments into image files.

    A file is taken as given; a folder gives its image files (not recursive, hidden files
    skipped, sorted by name); anything else with ``*``, ``?`` or ``[`` is a glob pattern (``**``
    recurses). Returns (paths in argument order, each file once; problems as (argument, reason)).
    """
    paths: list[Path] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(p: Path) -> None:
        key = os.path.normcase(os.path.realpath(p))
        if key not in seen:
            seen.add(key)
            paths.append(p)

    exts = " ".join(IMAGE_EXTENSIONS)
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            try:
                found = sorted(q for q in p.iterdir() if q.is_file() and _is_image_name(q))
            except OSError as e:
                problems.append((arg, f"cannot list the folder ({e.strerror or e})"))
                continue
            if not found:
                problems.append((arg, f"folder has no images ({exts})"))
            for q in found:
                add(q)
        elif p.is_file():
            add(p)
        elif p.exists():
            problems.append((arg, "not a file or folder"))
        elif any(c in arg for c in "*?["):
            matches = sorted(glob.glob(arg, recursive=True))
            found = [Path(m) for m in matches if Path(m).is_file() and _is_image_name(Path(m))]
            if not matches:
                problems.append((arg, "pattern matched nothing"))
            elif not found:
                problems.append((arg, f"pattern matched no images ({exts})"))
            for q in found:
                add(q)
        elif p.is_symlink():
            problems.append((arg, "broken link (its target does not exist)"))
        else:
            problems.append((arg, "no such file"))
    return paths, problems


def _is_image_name(p: Path) -> bool:
    return not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


# ------------------------------------------------------------------------------------------------
# Tensors


def pil_to_tensor(im: Image.Image) -> torch.Tensor:
    """A PIL image (any mode, via :func:`to_rgb`) as a float32 (1, 3, H, W) tensor in [0, 1]."""
    import torch

    a = np.asarray(to_rgb(im), dtype=np.uint8)  # (H, W, 3)
    chw = np.ascontiguousarray(a.transpose(2, 0, 1))
    return torch.from_numpy(np.divide(chw, np.float32(255.0), dtype=np.float32))[None]


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """A (3, H, W) or (1, 3, H, W) tensor in [0, 1] as an RGB image (clamped, then rounded)."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3 or t.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) or (1, 3, H, W) tensor, got shape {tuple(t.shape)}")
    a = t.detach().to("cpu").float().numpy()
    if not np.isfinite(a).all():
        raise ValueError("the image tensor has NaN or infinite values")
    a = np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), "RGB")

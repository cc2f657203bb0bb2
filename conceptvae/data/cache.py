"""The prepared cache: every image decoded, centre-cropped and resized once, stored as uint8.

Training reads this, never JPEGs. A cache is a folder::

    images.npy       uint8 (N, 3, S, S), RGB; open with np.load(mmap_mode="r")
    labels.npy       uint8 (N, A) in {0, 1}
    attributes.json  the A attribute names
    partition.npy    int8 (N,): 0 train, 1 valid, 2 test
    identity.npy     int32 (N,): person id, -1 unknown
    filenames.json   the N source file names (relative to the source image folder)
    landmarks.npy    float32 (N, 5, 2) (x, y), only when the source has landmarks: 0-based pixel
                     centres in the cache images (pixel (0, 0)'s centre is (0.0, 0.0))
    meta.json        written last: source, layout, image size, crop, format version, count,
                     skipped files with reasons, partition source, created time, versions;
                     ``prepare_params`` (what the cache is made from, with a fingerprint of the
                     source's files and labels) and ``made_from`` (its readable part: source
                     folder, file count, hashes of the file names and of the labels, size, crop)

:func:`prepare` builds it in a hidden sibling ``.OUT.partial/`` and renames it into place only
when complete; an interrupted or failed run keeps the finished chunks there and the same call
resumes from them. :func:`open_cache` refuses anything without a valid ``meta.json`` and
consistent arrays. :func:`open_or_prepare` reuses a cache only for the data it was made from and
prepares other data beside it (``CACHE_DIR-XXXXXXXX``), never over it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import itertools
import json
import math
import os
import shutil
import signal
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFile

from conceptvae._fs import atomic_write_json, check_output_dir, publish_dir
from conceptvae._parallel import worker_pool
from conceptvae.data import LabelledImages
from conceptvae.errors import DataError, OutputError
from conceptvae.images import DAMAGED, to_rgb, unreadable_reason

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
PARTITIONS = {"train": 0, "valid": 1, "test": 2}
CELEBA_CROP = 148
_MAX_CHUNK = 256
_SYNC_EVERY_S = 2.0  # how often finished chunks are made durable and recorded as done
_HEADER_LEN = 128  # bytes of the .npy header we write (a multiple of 64, as numpy aligns)
_REQUIRED = (
    "images.npy",
    "labels.npy",
    "attributes.json",
    "partition.npy",
    "identity.npy",
    "filenames.json",
)
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# What a damaged or non-image file raises while opening or decoding (UnidentifiedImageError and
# "image file is truncated" are OSErrors): the same as for a photo being edited.
_UNREADABLE = DAMAGED


# ------------------------------------------------------------------------------------------------
# Decoding one image (runs in the worker processes)


def _unorient_box(
    box: tuple[int, int, int, int], orientation: int, w0: int, h0: int
) -> tuple[int, int, int, int]:
    """A box in the EXIF-oriented image -> the same region in the stored (w0 x h0) pixels."""
    x0, y0, x1, y1 = box
    if orientation in (5, 6, 7, 8):  # the upright image is the stored one transposed
        x0, y0, x1, y1 = y0, x0, y1, x1
        flip_x, flip_y = orientation in (7, 8), orientation in (6, 7)
    else:
        flip_x, flip_y = orientation in (2, 3), orientation in (3, 4)
    if flip_x:
        x0, x1 = w0 - x1, w0 - x0
    if flip_y:
        y0, y1 = h0 - y1, h0 - y0
    return x0, y0, x1, y1


def _load_image(
    path: str, image_size: int, crop: int | None, apply_exif: bool
) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode ``path``, cut the centred ``crop`` square, area-resize it to ``image_size``.

    Returns the (3, S, S) uint8 array and the image's (width, height) after EXIF orientation.
    Raises one of ``_UNREADABLE`` for a damaged file and :class:`DataError` when the crop does not
    fit (a wrong parameter, not a damaged file).
    """
    with Image.open(path) as im:
        w0, h0 = im.size
        orientation = 1
        if apply_exif:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if orientation not in _ORIENTATION:
                orientation = 1
        w, h = (h0, w0) if orientation in (5, 6, 7, 8) else (w0, h0)
        c = crop if crop is not None else min(w, h)
        if c > w or c > h:
            raise DataError(
                f"crop {c} is larger than image {path} ({w} x {h}): "
                "pass a smaller --crop (at most the shorter side of every image)"
            )
        # JPEG DCT scaling: decode at 1/2, 1/4 or 1/8 size as long as the crop keeps at least
        # image_size pixels, so the box filter below still does the final area resampling.
        scale = 1.0
        if im.format == "JPEG":
            s = next(s for s in (8, 4, 2, 1) if c >= s * image_size)
            if s > 1:
                drafted = im.draft("RGB", (w0 // s, h0 // s))
                if drafted is not None:
                    scale = w0 / drafted[1][2]
        im.load()
        rgb = to_rgb(im)
    # The centred square of the upright (EXIF-oriented) image, mapped back into the stored
    # frame: resize there, then orient only the small result (exact, and cheaper).
    left, top = (w - c) // 2, (h - c) // 2
    x0, y0, x1, y1 = _unorient_box((left, top, left + c, top + c), orientation, w0, h0)
    box = (x0 / scale, y0 / scale, x1 / scale, y1 / scale)
    resample = Image.Resampling.BOX if c / scale >= image_size else Image.Resampling.BILINEAR
    out = rgb.resize((image_size, image_size), resample, box=box)
    if orientation != 1:
        out = out.transpose(_ORIENTATION[orientation])
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1), (w, h)


def _decode_chunk(task: tuple) -> tuple:
    """Decode one chunk of images: the unit of parallel work and of resuming.

    ``task`` is (chunk id, paths, image_size, crop, apply_exif). Returns (chunk id, images
    (n, 3, S, S) uint8 with zero rows for unreadable files, sizes (n, 2) int32, failures
    [(row in chunk, reason)]).
    """
    chunk, paths, image_size, crop, apply_exif = task
    images = np.zeros((len(paths), 3, image_size, image_size), np.uint8)
    sizes = np.zeros((len(paths), 2), np.int32)
    failures: list[tuple[int, str]] = []
    truncated_ok = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file must fail, not decode as grey
    try:
        for j, path in enumerate(paths):
            try:
                images[j], sizes[j] = _load_image(path, image_size, crop, apply_exif)
            except _UNREADABLE as e:
                failures.append((j, unreadable_reason(path, e)))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok
    return chunk, images, sizes, failures


def _worker_init() -> None:
    # Ctrl-C goes to the whole process group: only the parent handles it (and keeps the
    # finished work); workers die quietly when it terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------------
# The .npy file we fill in place


def _npy_header(shape: tuple[int, ...], length: int = _HEADER_LEN) -> bytes:
    """A version 1.0 .npy header for a C-order uint8 array, padded to ``length`` bytes."""
    d = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    body_len = length - 10
    if len(d) + 1 > body_len:
        return _npy_header(shape, length + 64)
    body = d + " " * (body_len - len(d) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", body_len) + body.encode("latin1")


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _create_images_file(path: Path, shape: tuple[int, ...]) -> None:
    """Create the (zero-filled) images file and reserve its disk space up front.

    Reserving makes a full disk fail here, as an OSError, instead of as SIGBUS or a short
    write deep into a long run.
    """
    header = _npy_header(shape)
    size = len(header) + math.prod(shape)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _pwrite_all(fd, header, 0)
        try:
            os.posix_fallocate(fd, 0, size)
        except (AttributeError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)
    finally:
        os.close(fd)


def _compact_images(path: Path, shape: tuple[int, ...], keep: np.ndarray) -> None:
    """Drop the rows of unreadable files in place: shift kept rows down, rewrite the header."""
    row = math.prod(shape[1:])
    header_len = len(_npy_header(shape))
    fd = os.open(path, os.O_RDWR)
    try:
        dst = 0
        block = max(1, (64 << 20) // row)
        kept = np.flatnonzero(keep)
        for start in range(0, kept.size, block):
            rows = kept[start : start + block]
            if rows[0] == dst and rows[-1] == dst + len(rows) - 1:  # already in place
                dst += len(rows)
                continue
            for i in rows:
                data = os.pread(fd, row, header_len + int(i) * row)
                _pwrite_all(fd, data, header_len + dst * row)
                dst += 1
        new_shape = (int(keep.sum()), *shape[1:])
        _pwrite_all(fd, _npy_header(new_shape, header_len), 0)
        os.ftruncate(fd, header_len + new_shape[0] * row)
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# prepare


def _source_arrays(source: LabelledImages) -> dict[str, Any]:
    """Check the source record's arrays agree with its file list; return them normalised."""
    n = len(source.filenames)
    if n == 0:
        raise DataError(f"no images in {source.image_dir}: nothing to prepare")
    labels = np.asarray(source.labels)
    if labels.ndim != 2 or labels.shape != (n, len(source.attr_names)):
        raise DataError(
            f"labels for {source.root} have shape {labels.shape}, expected ({n}, "
            f"{len(source.attr_names)}) for {n} images and {len(source.attr_names)} attributes"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 1):
        raise DataError(
            f"labels for {source.root} must be 0/1, found values from {labels.min()} to "
            f"{labels.max()}"
        )
    out = {"labels": labels.astype(np.uint8)}
    for name, shape, dtype in (
        ("partition", (n,), np.int8),
        ("identity", (n,), np.int32),
        ("landmarks", (n, 5, 2), np.float32),
    ):
        value = getattr(source, name)
        if value is None:
            out[name] = None
            continue
        value = np.asarray(value)
        if value.shape != shape:
            raise DataError(f"{name} for {source.root} has shape {value.shape}, expected {shape}")
        out[name] = value.astype(dtype)
    part = out["partition"]
    if part is not None and part.size and (part.min() < 0 or part.max() > 2):
        raise DataError(f"partition for {source.root} must be 0, 1 or 2 (train, valid, test)")
    return out


def _hash_partition(keys: Sequence[str]) -> np.ndarray:
    """Deterministic 80/10/10 train/valid/test split from a stable hash of each key."""
    out = np.empty(len(keys), np.int8)
    for i, key in enumerate(keys):
        h = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 10
        out[i] = 0 if h < 8 else (1 if h == 8 else 2)
    return out


def _partition(source: LabelledImages, arrays: dict[str, Any]) -> tuple[np.ndarray, str]:
    if arrays["partition"] is not None:
        what = source.files.get("partition")
        return arrays["partition"], f"source ({what})" if what else "source"
    identity = arrays["identity"]
    if identity is not None and (identity >= 0).all():
        keys = [f"identity:{int(i)}" for i in identity]
        how = "hash of identity (80/10/10)"
    elif identity is not None and (identity >= 0).any():
        keys = [
            f"identity:{int(i)}" if i >= 0 else f"file:{f}"
            for i, f in zip(identity, source.filenames)
        ]
        how = "hash of identity, or of the file name where unknown (80/10/10)"
    else:
        keys = [f"file:{f}" for f in source.filenames]
        how = "hash of file name (80/10/10)"
    return _hash_partition(keys), how


def _fingerprint(source: LabelledImages, arrays: dict[str, Any]) -> str:
    """Identifies the source well enough to refuse resuming onto different data."""
    h = hashlib.sha256()
    h.update(f"{source.layout}\0{Path(source.image_dir).absolute()}\0".encode())
    h.update("\0".join(source.filenames).encode())
    h.update("\0".join(source.attr_names).encode())
    for key in ("labels", "partition", "identity", "landmarks"):
        a = arrays[key]
        h.update(b"none" if a is None else np.ascontiguousarray(a).tobytes())
    n = len(source.filenames)
    for i in sorted(set(np.linspace(0, n - 1, min(n, 64)).astype(int).tolist())):
        try:
            st = os.stat(source.image_path(i))
            h.update(f"{i}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{i}:missing".encode())
    return h.hexdigest()


def _prepare_params(
    source: LabelledImages, arrays: dict[str, Any], image_size: int, crop: int | None
) -> dict[str, Any]:
    """What a prepare of ``source`` at ``image_size`` / ``crop`` is made from (meta.json's
    ``prepare_params``): equal params mean the same cache. ``crop`` None resolves to 148 for
    CelebA layouts, as :func:`prepare` does."""
    if crop is None and source.layout.startswith("celeba"):
        crop = CELEBA_CROP
    n = len(source.filenames)
    return {
        "format_version": FORMAT_VERSION,
        "image_size": int(image_size),
        "crop": None if crop is None else int(crop),
        "apply_exif": not source.layout.startswith("celeba"),
        "chunk_size": _chunk_size(n),
        "count": n,
        "source_fingerprint": _fingerprint(source, arrays),
    }


def _sha256(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _made_from(
    source: LabelledImages, arrays: dict[str, Any], params: dict[str, Any]
) -> dict[str, Any]:
    """The readable part of what a cache is made from (meta.json's ``made_from``): what
    :func:`open_or_prepare` names when a cache does not match the data asked for."""
    labels = np.ascontiguousarray(arrays["labels"])
    return {
        "image_dir": os.path.abspath(source.image_dir),
        "files": len(source.filenames),
        "filenames_sha256": _sha256("\0".join(source.filenames).encode()),
        "labels_sha256": _sha256(
            "\0".join(source.attr_names).encode(), str(labels.shape).encode(), labels.tobytes()
        ),
        "image_size": params["image_size"],
        "crop": params["crop"],
    }


def _chunk_size(n: int) -> int:
    # About 64 chunks for small sets (progress and load balance), 256 images at most.
    return int(min(_MAX_CHUNK, max(1, -(-n // 64))))


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_params(image_size: Any, crop: Any, workers: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)):
        raise DataError(f"image_size must be an integer >= 8, got {image_size!r}")
    if image_size < 8:
        raise DataError(f"image_size must be at least 8 pixels, got {image_size}")
    if crop is not None and (
        isinstance(crop, bool) or not isinstance(crop, (int, np.integer)) or crop < 1
    ):
        raise DataError(f"crop must be a positive integer (pixels) or None, got {crop!r}")
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 0:
        raise DataError(f"workers must be 0 (all cores) or a positive integer, got {workers!r}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Progress:
    """The partial build's record of finished chunks: ``progress.jsonl``, one line per chunk.

    A line is appended only after the chunk's rows are on disk (fdatasync of the images file),
    batched every few seconds, so a line always refers to durable rows. A torn last line from a
    crash is ignored and that chunk is simply decoded again.
    """

    def __init__(self, partial: Path, images_fd: int):
        self.path = partial / "progress.jsonl"
        self.fd = images_fd
        self.pending: list[str] = []
        self.last = time.monotonic()

    @staticmethod
    def read(partial: Path) -> dict[int, dict[str, Any]]:
        done: dict[int, dict[str, Any]] = {}
        try:
            text = (partial / "progress.jsonl").read_text(encoding="utf-8")
        except OSError:
            return done
        for line in text.splitlines():
            try:
                rec = json.loads(line)
                done[int(rec["chunk"])] = rec
            except (ValueError, KeyError, TypeError):
                continue
        return done

    def add(self, chunk: int, sizes: np.ndarray, failures: list[tuple[int, str]]) -> None:
        rec = {"chunk": chunk, "sizes": sizes.tolist(), "failed": [list(f) for f in failures]}
        self.pending.append(json.dumps(rec, separators=(",", ":")))
        if time.monotonic() - self.last >= _SYNC_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        os.fdatasync(self.fd)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("\n".join(self.pending) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.pending.clear()
        self.last = time.monotonic()


def _landmarks_to_cache(
    landmarks: np.ndarray, sizes: np.ndarray, crop: int | None, image_size: int
) -> np.ndarray:
    """1-based source pixel coordinates -> 0-based pixel centres in the cache images."""
    w, h = sizes[:, 0].astype(np.float64), sizes[:, 1].astype(np.float64)
    c = np.full_like(w, crop) if crop is not None else np.minimum(w, h)
    left, top = np.floor((w - c) / 2), np.floor((h - c) / 2)
    s = image_size / c
    out = np.empty(landmarks.shape, np.float64)
    out[..., 0] = (landmarks[..., 0] - 1.0 - left[:, None] + 0.5) * s[:, None] - 0.5
    out[..., 1] = (landmarks[..., 1] - 1.0 - top[:, None] + 0.5) * s[:, None] - 0.5
    return out.astype(np.float32)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())


def _write_error(out: Path, partial: Path, e: OSError, kept: bool) -> OutputError:
    detail = f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
    if e.filename:
        detail += f": {e.filename}"
    resume = (
        f"; the finished part is kept in {partial} and the same command resumes from it"
        if kept
        else ""
    )
    return OutputError(
        f"disk full (or write error) while writing the cache to {out}: {detail}; "
        f"free space (or check the folder is writable) and run again{resume}"
    )


def prepare(
    source: LabelledImages,
    out: str | os.PathLike,
    image_size: int = 64,
    crop: int | None = None,
    workers: int = 0,
    force: bool = False,
    progress: bool = True,
) -> PreparedCache:
    """Decode, centre-crop and resize every image of ``source`` once into a cache at ``out``.

    Args:
        source: the labelled images (any reader's :class:`LabelledImages`).
        out: the cache folder to create; refused if it exists and is not empty, unless ``force``
            (then it is replaced, only once the new cache is complete).
        image_size: side S of the square uint8 images, at least 8.
        crop: side of the centred square cut before resizing; None = 148 for CelebA layouts
            (178 x 218 images), else the largest centred square of each image.
        workers: decoding processes; 0 = all cores available to this process.
        force: replace a non-empty ``out``.
        progress: show a progress bar on stderr.

    Unreadable images (corrupt, truncated, empty, not an image) are skipped: listed in
    ``meta.json`` and in a warning on stderr; the other rows keep their own labels. An
    interrupted or failed run keeps its finished chunks in ``.OUT.partial`` next to ``out``;
    the same call resumes from them. Returns the opened :class:`PreparedCache`.
    """
    _check_params(image_size, crop, workers)
    image_size = int(image_size)
    out = Path(os.path.abspath(out))
    check_output_dir(out, force)
    image_dir = Path(os.path.abspath(source.image_dir))
    if out.exists() and (image_dir == out or out in image_dir.parents):
        raise OutputError(f"output folder {out} holds the source images: choose another folder")
    arrays = _source_arrays(source)
    n = len(source.filenames)
    params = _prepare_params(source, arrays, image_size, crop)
    crop, apply_exif, chunk = params["crop"], params["apply_exif"], params["chunk_size"]
    crop_rule = (
        f"centred {crop} x {crop} square" if crop else "largest centred square of each image"
    )
    workers = int(workers) or _default_workers()
    n_chunks = -(-n // chunk)
    shape = (n, 3, image_size, image_size)
    paths = [str(source.image_path(i)) for i in range(n)]
    _check_first_crop(paths, crop)

    partial = out.parent / f".{out.name}.partial"
    done: dict[int, dict[str, Any]] = {}
    if partial.exists():
        old = _read_json(partial / "params.json")
        meta = _read_json(partial / "meta.json")
        if isinstance(meta, dict) and meta.get("prepare_params") == params:
            _warn(f"finishing the prepare interrupted while moving {partial} into place")
            return _publish(partial, out, force)
        if old == params and (partial / "images.npy").is_file():
            done = _Progress.read(partial)
            done = {k: v for k, v in done.items() if 0 <= k < n_chunks}
        if done:
            _warn(
                f"resuming the unfinished prepare in {partial}: "
                f"{sum(min(chunk, n - k * chunk) for k in done)} of {n} images already done"
            )
        elif old != params:
            _warn(
                f"discarding the unfinished prepare in {partial}: it was made from a different "
                "source or with different parameters"
            )
            shutil.rmtree(partial)

    t0 = time.perf_counter()
    fresh = not done
    try:
        if fresh:
            partial.mkdir(parents=True, exist_ok=True)
            _create_images_file(partial / "images.npy", shape)
            atomic_write_json(partial / "params.json", params)
            with contextlib.suppress(OSError):
                (partial / "progress.jsonl").unlink()
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _write_error(out, partial, e, kept=False) from None

    todo = [k for k in range(n_chunks) if k not in done]
    processed = 0
    header_len = len(_npy_header(shape))
    row_bytes = 3 * image_size * image_size
    tasks = [(k, paths[k * chunk : (k + 1) * chunk], image_size, crop, apply_exif) for k in todo]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=n,
            initial=n - sum(min(chunk, n - k * chunk) for k in todo),
            unit="img",
            desc="prepare",
            file=sys.stderr,
            dynamic_ncols=True,
        )
    fd = os.open(partial / "images.npy", os.O_RDWR)
    record = _Progress(partial, fd)
    try:
        try:
            results = _run_chunks(tasks, min(workers, max(1, len(todo))))
            with contextlib.closing(results):
                for k, rows, sizes, failures in results:
                    try:
                        offset = header_len + k * chunk * row_bytes
                        _pwrite_all(fd, memoryview(rows).cast("B"), offset)
                        record.add(k, sizes, failures)
                    except OSError as e:
                        kept = bool(record.pending) or record.path.exists()
                        raise _write_error(out, partial, e, kept) from None
                    done[k] = {"sizes": sizes.tolist(), "failed": [list(f) for f in failures]}
                    processed += len(rows)
                    if bar is not None:
                        bar.update(len(rows))
            try:
                record.flush()
            except OSError as e:
                raise _write_error(out, partial, e, kept=True) from None
        finally:
            if bar is not None:
                bar.close()
            with contextlib.suppress(OSError):
                record.flush()  # keep whatever finished before an interrupt or error
            os.close(fd)
    except BaseException:
        if not _Progress.read(partial):
            shutil.rmtree(partial, ignore_errors=True)  # nothing worth resuming
        raise
    seconds = time.perf_counter() - t0

    # Collect per-row results (including chunks finished by an earlier run).
    sizes = np.zeros((n, 2), np.int32)
    keep = np.ones(n, bool)
    skipped: list[dict[str, str]] = []
    for k in range(n_chunks):
        rec = done[k]
        lo = k * chunk
        sizes[lo : lo + len(rec["sizes"])] = np.asarray(rec["sizes"], np.int32).reshape(-1, 2)
        for j, reason in rec["failed"]:
            keep[lo + j] = False
            skipped.append({"file": source.filenames[lo + j], "reason": reason})
    if not keep.any():
        shutil.rmtree(partial, ignore_errors=True)
        first = skipped[0]
        raise DataError(
            f"none of the {n} images in {image_dir} could be read "
            f"(first: {first['file']}: {first['reason']}): check the files and the folder"
        )

    partition, partition_source = _partition(source, arrays)
    identity = arrays["identity"]
    if identity is None:
        identity = np.full(n, -1, np.int32)
    try:
        if not keep.all():
            # The rows are about to move: the chunk record no longer describes the file.
            (partial / "progress.jsonl").unlink(missing_ok=True)
            _compact_images(partial / "images.npy", shape, keep)
        _save_npy(partial / "labels.npy", arrays["labels"][keep])
        _save_npy(partial / "partition.npy", partition[keep])
        _save_npy(partial / "identity.npy", identity[keep])
        atomic_write_json(partial / "attributes.json", list(source.attr_names))
        atomic_write_json(
            partial / "filenames.json", [f for f, k in zip(source.filenames, keep) if k]
        )
        if arrays["landmarks"] is not None:
            lm = _landmarks_to_cache(arrays["landmarks"], sizes, crop, image_size)
            _save_npy(partial / "landmarks.npy", lm[keep])
        import conceptvae

        meta = {
            "kind": "conceptvae prepared cache",
            "format_version": FORMAT_VERSION,
            "count": int(keep.sum()),
            "source": str(source.root),
            "image_dir": str(image_dir),
            "layout": source.layout,
            "source_count": n,
            "source_files": dict(source.files),
            "image_size": image_size,
            "crop": crop,
            "crop_rule": crop_rule,
            "resize": "area (JPEG DCT reduction, then box filter)",
            "exif_orientation_applied": apply_exif,
            "images": f"uint8 (N, 3, {image_size}, {image_size}) RGB",
            "attributes": len(source.attr_names),
            "partition_source": partition_source,
            "landmarks": (
                "float32 (N, 5, 2) (x, y) of lefteye, righteye, nose, leftmouth, rightmouth "
                "as 0-based pixel centres in the cache images"
                if arrays["landmarks"] is not None
                else None
            ),
            "skipped": skipped,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "library_version": conceptvae.__version__,
            "seconds": round(seconds, 3),
            "images_per_s": round(processed / seconds, 1) if seconds > 0 else None,
            "resumed": not fresh,
            "prepare_params": params,
            "made_from": _made_from(source, arrays, params),
        }
        for name in ("params.json", "progress.jsonl"):
            (partial / name).unlink(missing_ok=True)
        atomic_write_json(partial / "meta.json", meta)  # last: marks the folder complete
    except OSError as e:
        (partial / "meta.json").unlink(missing_ok=True)
        raise _write_error(out, partial, e, kept=(partial / "progress.jsonl").exists()) from None

    if skipped:
        shown = "; ".join(f"{s['file']} ({s['reason']})" for s in skipped[:10])
        more = f"; and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        _warn(
            f"warning: skipped {len(skipped)} unreadable image(s) of {n}: {shown}{more} "
            f"(listed in {out / 'meta.json'})"
        )
    return _publish(partial, out, force)


def _check_first_crop(paths: list[str], crop: int | None) -> None:
    """Fail fast on a crop that does not fit, before any work (reads one header)."""
    if crop is None:
        return
    with contextlib.suppress(*_UNREADABLE), Image.open(paths[0]) as im:
        w, h = im.size
        if crop > min(w, h):
            raise DataError(
                f"crop {crop} is larger than image {paths[0]} ({w} x {h}): "
                "pass a smaller --crop (at most the shorter side of every image)"
            )


def _run_chunks(tasks: list[tuple], workers: int) -> Iterator[tuple]:
    """Decode chunks in this process (one worker) or in worker processes, yielding as they finish.

    At most two chunks per worker are in flight, so stopping (an error, Ctrl-C) only waits for
    those few short chunks to finish; no process is killed mid-write.
    """
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _decode_chunk(task)
        return
    with worker_pool(workers, _worker_init) as executor:
        queue = iter(tasks)
        pending = {executor.submit(_decode_chunk, t) for t in itertools.islice(queue, 2 * workers)}
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                for t in itertools.islice(queue, 1):
                    pending.add(executor.submit(_decode_chunk, t))
                yield future.result()


def _publish(partial: Path, out: Path, force: bool) -> PreparedCache:
    """Move the complete build into place (replacing ``out`` under ``force``) and open it."""
    try:
        publish_dir(partial, out, force)
    except OSError as e:
        raise OutputError(
            f"cannot move the finished cache {partial} to {out}: {e.strerror or e}; "
            "make sure the folder is writable and run again (the work is kept)"
        ) from None
    return open_cache(out)


# ------------------------------------------------------------------------------------------------
# Reading


def is_cache(path: str | os.PathLike) -> bool:
    """True if ``path`` is a folder with a prepared cache's ``meta.json`` (a finished prepare).

    A cheap check; :func:`open_cache` validates the arrays.
    """
    meta = _read_json(Path(path) / "meta.json") if Path(path).is_dir() else None
    return isinstance(meta, dict) and meta.get("kind") == "conceptvae prepared cache"


def open_cache(path: str | os.PathLike) -> PreparedCache:
    """Open a prepared cache; :class:`DataError` saying what is missing if it is not complete."""
    return PreparedCache(path)


def open_or_prepare(
    data: Any,
    cache_dir: str | os.PathLike,
    image_size: int,
    *,
    labels: str | os.PathLike | None = None,
    crop: int | None = None,
    workers: int = 0,
    progress: bool = True,
    reuse_only: bool = False,
) -> PreparedCache:
    """``data`` as a prepared cache: itself when it is one, else the dataset found there (or
    given as :class:`LabelledImages`) prepared once into ``cache_dir`` at ``image_size`` (and
    ``crop``, see :func:`prepare`).

    A cache already in ``cache_dir`` is reused only when it was prepared from this very data:
    meta.json's ``prepare_params`` equal what a prepare would record now (the source folder,
    its file names and count, sizes and times of a sample of its files, the attribute names
    and every label, partition, identity and landmarks, image size and crop). A cache made from
    anything else is never used and never touched: the data is prepared beside it, into
    ``CACHE_DIR-XXXXXXXX`` (the first 8 hex digits of a hash of those params), with a note on
    stderr, and found there on the next call. A cache without ``prepare_params`` counts as made
    from other data. ``reuse_only``: raise :class:`DataError` instead of preparing (DDP ranks
    other than 0 open what rank 0 prepared).

    The caller checks the image size of a cache given directly as ``data``.
    """
    from conceptvae.data import LabelledImages, open_dataset

    if isinstance(data, PreparedCache):
        return data
    if not isinstance(data, LabelledImages) and is_cache(data):
        if labels is not None:
            raise DataError(f"{data} is a prepared cache: --labels applies to image folders only")
        return open_cache(data)
    # DataError when DATA is not a dataset
    source = data if isinstance(data, LabelledImages) else open_dataset(data, labels=labels)
    _check_params(image_size, crop, workers)
    arrays = _source_arrays(source)
    params = _prepare_params(source, arrays, image_size, crop)
    cache_dir = Path(cache_dir)
    beside = sibling_cache_dir(cache_dir, params)
    for path in (cache_dir, beside):
        if is_cache(path) and _read_json(path / "meta.json").get("prepare_params") == params:
            return open_cache(path)
    target = beside if is_cache(cache_dir) else cache_dir
    if reuse_only:
        raise DataError(
            f"no cache of {source.root} in {cache_dir} or {beside}: prepare it first "
            f"(conceptvae prepare {source.root} {cache_dir})"
        )
    if target == beside:
        why = _mismatch(_read_json(cache_dir / "meta.json"), _made_from(source, arrays, params))
        _warn(
            f"note: {cache_dir} holds a cache of other data ({why}); preparing {source.root} "
            f"into {beside} instead (the cache in {cache_dir} is kept)"
        )
    return prepare(
        source, target, image_size=image_size, crop=crop, workers=workers, progress=progress
    )


def sibling_cache_dir(cache_dir: str | os.PathLike, params: dict[str, Any]) -> Path:
    """Where :func:`open_or_prepare` prepares data whose ``prepare_params`` are ``params`` when
    ``cache_dir`` holds another cache: ``CACHE_DIR-`` and 8 hex digits of their hash."""
    key = _sha256(json.dumps(params, sort_keys=True).encode())[:8]
    cache_dir = Path(cache_dir)
    return cache_dir.with_name(f"{cache_dir.name}-{key}")


def _mismatch(meta: dict[str, Any], now: dict[str, Any]) -> str:
    """What differs between a cache's meta.json and the data asked for, in a few words."""
    old = meta.get("made_from")
    if not isinstance(old, dict):  # made before meta.json recorded this: compare what it has
        old = {
            "image_dir": meta.get("image_dir"),
            "files": meta.get("source_count"),
            "image_size": meta.get("image_size"),
            "crop": meta.get("crop"),
        }
    names = {
        "image_dir": "source folder",
        "files": "number of files",
        "filenames_sha256": "file names",
        "labels_sha256": "labels",
        "image_size": "image size",
        "crop": "crop",
    }
    diff = []
    for key, name in names.items():
        if key in old and old[key] != now[key]:
            shown = "" if key.endswith("sha256") else f" {old[key]} vs {now[key]}"
            diff.append(f"{name}{shown}")
    return ", ".join(diff) if diff else "file sizes or times, partition or landmarks differ"


def frame_crop(source: LabelledImages, crop: float | None) -> int | None:
    """The crop that puts ``source`` in a model's frame: ``crop`` (the model's, in CelebA's
    aligned 178 x 218 frame) when the source's first image has that shape, else None (the
    reader's default). Folders of aligned CelebA-style faces are then cut like the training
    images, so vectors from a user's own labels see faces framed as the model does."""
    if crop is None or not len(source):
        return None
    try:
        with Image.open(source.image_path(0)) as im:
            size = im.size
    except OSError:
        return None
    return round(crop) if size == (178, 218) else None


class PreparedCache:
    """A prepared cache opened for reading; ``images`` is memory-mapped.

    Attributes:
        path: the cache folder.
        meta: the parsed ``meta.json``.
        images: (N, 3, S, S) uint8 memmap (an in-memory array after :meth:`load_into_memory`).
        labels: (N, A) uint8 in {0, 1}; attr_names: the A names.
        partition: (N,) int8 0/1/2; identity: (N,) int32, -1 unknown; filenames: N names.
        landmarks: (N, 5, 2) float32 0-based pixel centres in the cache images, or None.
        skipped: [{"file", "reason"}] for the source files that could not be read.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        p = self.path
        if not p.is_dir():
            raise DataError(f"no prepared cache at {p}: folder not found")
        unfinished = (p / "params.json").exists() or (p / "progress.jsonl").exists()
        if not (p / "meta.json").is_file():
            hint = (
                "it is an unfinished prepare: run the same prepare command again to resume it"
                if unfinished
                else "run `conceptvae prepare DATA OUT` to make one"
            )
            raise DataError(f"{p} is not a complete prepared cache (meta.json is missing): {hint}")
        meta = _read_json(p / "meta.json")
        if not isinstance(meta, dict) or meta.get("kind") != "conceptvae prepared cache":
            raise DataError(
                f"{p / 'meta.json'} is not a prepared cache's meta.json (unreadable or foreign): "
                "prepare the cache again"
            )
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise DataError(
                f"cache {p} has format version {version!r}; this conceptvae reads version "
                f"{FORMAT_VERSION}: upgrade conceptvae or prepare the cache again"
            )
        missing = [f for f in _REQUIRED if not (p / f).is_file()]
        if meta.get("landmarks") and not (p / "landmarks.npy").is_file():
            missing.append("landmarks.npy")
        if missing:
            raise DataError(
                f"cache {p} is incomplete: {', '.join(missing)} missing; prepare it again"
            )
        self.meta: dict[str, Any] = meta
        n, s = meta.get("count"), meta.get("image_size")

        def load(name: str, mmap: bool = False) -> np.ndarray:
            try:
                return np.load(p / name, mmap_mode="r" if mmap else None, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise DataError(
                    f"cannot read {p / name} ({e}): the cache is damaged; prepare it again"
                ) from None

        def expect(name: str, a: Any, shape: tuple, dtype: Any = None) -> None:
            got_shape = getattr(a, "shape", (len(a),))
            got_dtype = getattr(a, "dtype", None)
            if tuple(got_shape) != shape or got_dtype != dtype:
                raise DataError(
                    f"cache {p} is inconsistent: {name} has shape {tuple(got_shape)} "
                    f"{got_dtype or ''}, expected {shape} {dtype or ''} (meta.json says {n} "
                    "images); prepare it again"
                )

        self.images: np.ndarray = load("images.npy", mmap=True)
        expect("images.npy", self.images, (n, 3, s, s), np.uint8)
        self.attr_names: list[str] = _read_json(p / "attributes.json")
        if not isinstance(self.attr_names, list):
            raise DataError(f"cannot read {p / 'attributes.json'}: prepare the cache again")
        self.labels: np.ndarray = load("labels.npy")
        expect("labels.npy", self.labels, (n, len(self.attr_names)), np.uint8)
        self.partition: np.ndarray = load("partition.npy")
        expect("partition.npy", self.partition, (n,), np.int8)
        self.identity: np.ndarray = load("identity.npy")
        expect("identity.npy", self.identity, (n,), np.int32)
        self.filenames: list[str] = _read_json(p / "filenames.json")
        if not isinstance(self.filenames, list):
            raise DataError(f"cannot read {p / 'filenames.json'}: prepare the cache again")
        expect("filenames.json", self.filenames, (n,))
        self.landmarks: np.ndarray | None = None
        if meta.get("landmarks"):
            self.landmarks = load("landmarks.npy")
            expect("landmarks.npy", self.landmarks, (n, 5, 2), np.float32)
        self.skipped: list[dict[str, str]] = list(meta.get("skipped", []))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        s = self.images.shape[-1]
        return f"PreparedCache({str(self.path)!r}, {len(self)} images, {s} px)"

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def relabelled(self, labels: Any, names: Sequence[str], source: str) -> PreparedCache:
        """The same images and splits with other labels, in memory (the folder is not touched):
        ``labels`` (N, A) in {0, 1} for ``names``; ``source`` says where they came from
        (``meta["labels_from"]``)."""
        import copy

        y = np.asarray(labels)
        if y.shape != (len(self), len(names)):
            raise ValueError(f"labels must be ({len(self)}, {len(names)}), got {y.shape}")
        out = copy.copy(self)
        out.labels = (y != 0).astype(np.uint8)
        out.attr_names = list(names)
        out.meta = {**self.meta, "labels_from": source}
        return out

    def split(self, name: str) -> np.ndarray:
        """Row indices (int64, ascending) of ``"train"``, ``"valid"``, ``"test"`` or ``"all"``."""
        if name == "all":
            return np.arange(len(self), dtype=np.int64)
        if name not in PARTITIONS:
            raise DataError(f"unknown split {name!r}: use train, valid, test or all")
        return np.flatnonzero(self.partition == PARTITIONS[name]).astype(np.int64)

    def load_into_memory(self) -> None:
        """Copy the images into RAM (N * 3 * S * S bytes): faster random batches than the map."""
        if isinstance(self.images, np.memmap):
            self.images = np.array(self.images)

    def _rows(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"batch indices out of range for a cache of {n} images")
        return np.where(idx < 0, idx + n, idx), idx

    def batch(self, indices: Any) -> torch.Tensor:
        """Images at ``indices`` (in that order) as float32 (B, 3, S, S) in [0, 1]."""
        import torch

        idx, _ = self._rows(indices)
        if idx.size > 1 and not (idx[1:] >= idx[:-1]).all():
            # Read the map in file order (locality), then put rows back in the asked order.
            order = np.argsort(idx, kind="stable")
            gathered = np.asarray(self.images[idx[order]])
            rows = np.empty_like(gathered)
            rows[order] = gathered
        else:
            rows = np.asarray(self.images[idx])
        # One numpy pass (uint8 -> float32 / 255, exact: 255 maps to 1.0). Not torch's .to/.div:
        # its intra-op threads cost ~10 ms per batch on a busy 2-core machine.
        return torch.from_numpy(np.divide(rows, np.float32(255.0), dtype=np.float32))

    def batch_labels(self, indices: Any) -> torch.Tensor:
        """Labels at ``indices`` as a uint8 (B, A) tensor."""
        import torch

        idx, _ = self._rows(indices)
        return torch.from_numpy(self.labels[idx])


class BatchLoader:
    """Shuffled batches ``(x, labels)`` of one split: x float32 (B, 3, S, S) in [0, 1], labels
    uint8 (B, A).

    The order of epoch ``e`` depends only on (seed, e): the same seed gives the same batches in
    every run. Each ``iter()`` uses the current epoch and then advances it; call
    :meth:`set_epoch` to choose it (e.g. when resuming training). With ``world_size > 1`` each
    rank gets its own equal share of every epoch (the permutation is padded by repeating its
    start, as torch's DistributedSampler does).
    """

    def __init__(
        self,
        cache: PreparedCache,
        split: str = "train",
        batch_size: int = 64,
        shuffle: bool = True,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.cache = cache
        self.split = split
        self.indices = cache.split(split)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        if self.indices.size == 0:
            raise DataError(f"split {split!r} of {cache.path} has no images")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _per_rank(self) -> int:
        return -(-self.indices.size // self.world_size)

    def __len__(self) -> int:
        m = self._per_rank()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's row indices for ``epoch``, in the order they will be served."""
        idx = self.indices
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch])
            idx = idx[rng.permutation(idx.size)]
        if self.world_size > 1:
            total = self._per_rank() * self.world_size
            idx = np.resize(idx, total)[self.rank :: self.world_size]
        return idx

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = self.epoch_indices(self.epoch)
        self.epoch += 1
        b = self.batch_size
        for k in range(len(self)):
            sel = idx[k * b : (k + 1) * b]
            yield self.cache.batch(sel), self.cache.batch_labels(sel)

"""Tiny CelebA datasets on disk, written with the real files' quirks byte for byte.

Text files (official and torchvision layouts): CRLF line endings; ``list_attr_celeba.txt`` has a
count line, the 40 names joined by single spaces WITH a trailing space, and rows
``000001.jpg -1  1  1 -1 ...`` (filename, space, first value unpadded, the rest ``" %2d"``);
landmark and bbox rows are the filename, a space and values right-aligned in width 5; the bbox
header is ``image_id x_1 y_1 width height``; partition and identity files have no header.
Kaggle: comma-separated CSVs with an ``image_id`` column and the images nested in
``img_align_celeba/img_align_celeba/``.

``write_celeba`` returns the arrays a reader must produce; tests break the written files with
``replace_line`` / ``delete_line``, which keep each file's line endings.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from conceptvae.data import CELEBA_ATTRIBUTES, LANDMARK_NAMES

LAYOUTS = ("celeba-official", "celeba-torchvision", "celeba-kaggle")
OPTIONAL = ("partition", "identity", "landmarks", "bbox")
LANDMARK_HEADER = [f"{p}_{c}" for p in LANDMARK_NAMES for c in ("x", "y")]
STEMS = {
    "attributes": "list_attr_celeba",
    "partition": "list_eval_partition",
    "identity": "identity_CelebA",
    "landmarks": "list_landmarks_align_celeba",
    "bbox": "list_bbox_celeba",
}


@dataclass
class CelebAFixture:
    root: Path  # what the user passes to the reader
    layout: str
    image_dir: Path
    filenames: list[str]
    raw: np.ndarray  # (n, 40) int -1/1 as written
    labels: np.ndarray  # (n, 40) uint8 0/1 as a reader must return
    partition: np.ndarray  # (n,) int8
    identity: np.ndarray  # (n,) int32
    landmarks: np.ndarray  # (n, 5, 2) float32
    bbox: np.ndarray  # (n, 4) int32
    files: dict[str, Path] = field(default_factory=dict)  # key -> written metadata file


def expected_arrays(n: int = 12, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    raw = rng.choice(np.array([-1, 1]), size=(n, len(CELEBA_ATTRIBUTES)))
    raw[0, :2] = (-1, 1)  # row 1 starts "-1  1", like the real 000001.jpg
    raw[1, 0] = 1  # and one row starts with an unpadded positive: "000002.jpg 1 ..."
    n_valid = n_test = max(1, n // 6)
    partition = np.array([0] * (n - n_valid - n_test) + [1] * n_valid + [2] * n_test, np.int8)
    identity = rng.integers(1, 10178, size=n).astype(np.int32)
    # landmark x in 60..115, y in 100..160: mixes 2- and 3-digit values, as in the real file
    lx = rng.integers(60, 116, size=(n, 5))
    ly = rng.integers(100, 161, size=(n, 5))
    landmarks = np.stack([lx, ly], axis=-1).astype(np.float32)
    bbox = np.stack(
        [
            rng.integers(0, 120, n),
            rng.integers(5, 120, n),
            rng.integers(90, 400, n),
            rng.integers(100, 500, n),
        ],
        axis=1,
    ).astype(np.int32)
    return {
        "raw": raw,
        "labels": (raw > 0).astype(np.uint8),
        "partition": partition,
        "identity": identity,
        "landmarks": landmarks,
        "bbox": bbox,
    }


_JPEGS: dict[tuple[int, int, int], bytes] = {}


def tiny_jpeg(i: int, size: tuple[int, int] = (178, 218)) -> bytes:
    """A real, decodable JPEG of ``size`` (width, height), different for each ``i``."""
    key = (i, *size)
    if key not in _JPEGS:
        colour = ((37 * i) % 256, (91 * i + 40) % 256, (53 * i + 90) % 256)
        buf = io.BytesIO()
        Image.new("RGB", size, colour).save(buf, format="JPEG", quality=60)
        _JPEGS[key] = buf.getvalue()
    return _JPEGS[key]


def attr_header(names=CELEBA_ATTRIBUTES) -> str:
    return " ".join(names) + " "  # the real file's trailing space


def attr_row(filename: str, values) -> str:
    values = [int(v) for v in values]
    return f"{filename} {values[0]}" + "".join(f" {v:2d}" for v in values[1:])


def width5_row(filename: str, values) -> str:
    return f"{filename} " + "".join(f"{int(v):5d}" for v in values)


def _write(path: Path, lines: list[str], eol: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(line + eol for line in lines).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def write_celeba(
    root: str | Path,
    layout: str = "celeba-official",
    n: int = 12,
    seed: int = 0,
    *,
    optional: tuple[str, ...] = OPTIONAL,
    drive_subfolders: bool = False,
    nested: bool = True,
    bom: bool = False,
    csv_eol: str = "\n",
    image_size: tuple[int, int] = (178, 218),
) -> CelebAFixture:
    """Write an ``n``-image CelebA in ``layout`` under ``root`` and return what a reader must give.

    ``optional``: which of partition/identity/landmarks/bbox files to write (Kaggle never has
    identity). ``drive_subfolders``: text files under ``Anno/`` and ``Eval/`` as in the Google
    Drive download. Kaggle only: ``nested`` image folder, UTF-8 ``bom`` and ``csv_eol``.
    """
    root = Path(root)
    arr = expected_arrays(n, seed)
    filenames = [f"{i + 1:06d}.jpg" for i in range(n)]
    base = root / "celeba" if layout == "celeba-torchvision" else root
    kaggle = layout == "celeba-kaggle"
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout}")

    image_dir = base / "img_align_celeba"
    if kaggle and nested:
        image_dir = image_dir / "img_align_celeba"
    image_dir.mkdir(parents=True)
    for i, f in enumerate(filenames):
        (image_dir / f).write_bytes(tiny_jpeg(i, image_size))

    files: dict[str, Path] = {}
    lm = arr["landmarks"].reshape(n, 10).astype(int)
    if kaggle:
        tables = {
            "attributes": (["image_id", *CELEBA_ATTRIBUTES], arr["raw"]),
            "partition": (["image_id", "partition"], arr["partition"][:, None]),
            "landmarks": (["image_id", *LANDMARK_HEADER], lm),
            "bbox": (["image_id", "x_1", "y_1", "width", "height"], arr["bbox"]),
        }
        for key, (header, values) in tables.items():
            if key != "attributes" and key not in optional:
                continue
            lines = [",".join(header)]
            lines += [
                f + "," + ",".join(str(int(v)) for v in row) for f, row in zip(filenames, values)
            ]
            files[key] = _write(base / f"{STEMS[key]}.csv", lines, csv_eol, bom)
    else:
        text = {
            "attributes": [str(n), attr_header()]
            + [attr_row(f, r) for f, r in zip(filenames, arr["raw"])],
            "partition": [f"{f} {p}" for f, p in zip(filenames, arr["partition"])],
            "identity": [f"{f} {p}" for f, p in zip(filenames, arr["identity"])],
            "landmarks": [str(n), " ".join(LANDMARK_HEADER)]
            + [width5_row(f, r) for f, r in zip(filenames, lm)],
            "bbox": [str(n), "image_id x_1 y_1 width height"]
            + [width5_row(f, r) for f, r in zip(filenames, arr["bbox"])],
        }
        for key, lines in text.items():
            if key != "attributes" and key not in optional:
                continue
            sub = ""
            if drive_subfolders:
                sub = "Eval" if key == "partition" else "Anno"
            files[key] = _write(base / sub / f"{STEMS[key]}.txt", lines, "\r\n")

    return CelebAFixture(
        root=root,
        layout=layout,
        image_dir=image_dir,
        filenames=filenames,
        raw=arr["raw"],
        labels=arr["labels"],
        partition=arr["partition"],
        identity=arr["identity"],
        landmarks=arr["landmarks"],
        bbox=arr["bbox"],
        files=files,
    )


def _split_keep_eol(path: Path) -> tuple[list[bytes], bytes]:
    data = path.read_bytes()
    eol = b"\r\n" if b"\r\n" in data else b"\n"
    lines = data.split(eol)
    assert lines[-1] == b"", f"{path} does not end with a line break"
    return lines[:-1], eol


def read_line(path: Path, lineno: int) -> str:
    """Line ``lineno`` (1-based) of ``path`` without its line break."""
    return _split_keep_eol(path)[0][lineno - 1].decode("utf-8")


def replace_line(path: Path, lineno: int, text: str) -> None:
    """Replace line ``lineno`` (1-based), keeping the file's line endings."""
    lines, eol = _split_keep_eol(path)
    lines[lineno - 1] = text.encode("utf-8")
    path.write_bytes(eol.join(lines) + eol)


def delete_line(path: Path, lineno: int) -> None:
    lines, eol = _split_keep_eol(path)
    del lines[lineno - 1]
    path.write_bytes(eol.join(lines) + eol)


def reorder_lines(path: Path, first_row: int, order) -> None:
    """Permute the rows from line ``first_row`` on (1-based) by ``order``."""
    lines, eol = _split_keep_eol(path)
    rows = lines[first_row - 1 :]
    lines[first_row - 1 :] = [rows[i] for i in order]
    path.write_bytes(eol.join(lines) + eol)

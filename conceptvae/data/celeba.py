"""Real CelebA in its three common layouts on disk.

``celeba-official``: ``PATH/img_align_celeba/*.jpg`` and the text files in ``PATH`` (or in the
``Anno/`` and ``Eval/`` subfolders of the Google Drive download, images maybe under ``Img/``).
``celeba-torchvision``: the same under ``PATH/celeba/``, as ``torchvision.datasets.CelebA``
leaves it. ``celeba-kaggle``: CSV files in ``PATH`` and the images in
``PATH/img_align_celeba/img_align_celeba/`` (or not nested).

Only the attribute file is required; partition, identity, landmark and bounding-box files are
read when present and matched to the attribute file by filename. The text files are CRLF with
columns separated by runs of spaces, so every line is parsed with ``str.split()``.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from conceptvae.data import CELEBA_ATTRIBUTES, LANDMARK_NAMES, LabelledImages
from conceptvae.errors import DataError

IMAGE_FOLDER = "img_align_celeba"
# key -> (file stem, what the file gives, in words)
_FILES: dict[str, tuple[str, str]] = {
    "attributes": ("list_attr_celeba", "attribute labels"),
    "partition": ("list_eval_partition", "the train/valid/test split"),
    "identity": ("identity_CelebA", "person identities"),
    "landmarks": ("list_landmarks_align_celeba", "landmarks"),
    "bbox": ("list_bbox_celeba", "bounding boxes"),
}
_TEXT_SUBDIRS = ("", "Anno", "Eval")  # the Google Drive download keeps the text files in these
_IMAGE_SUBDIRS = ("", "Img")
_LANDMARK_COLUMNS = [f"{p}_{c}" for p in LANDMARK_NAMES for c in ("x", "y")]
_BBOX_COLUMNS = ["x_1", "y_1", "width", "height"]

LAYOUTS_EXPECTED = (
    "CelebA (img_align_celeba/ + list_attr_celeba.txt), the torchvision layout (PATH/celeba/...) "
    "or Kaggle CelebA (list_attr_celeba.csv)"
)


def detect_celeba_layout(path: str | os.PathLike) -> str | None:
    """Which CelebA layout ``path`` holds: ``celeba-official``, ``celeba-torchvision``,
    ``celeba-kaggle``, or None when it looks like none of them.

    Detection looks only for marker files and folders; :func:`read_celeba` checks the content.
    """
    p = Path(path)
    if not p.is_dir():
        return None
    if any((p / f"{stem}.csv").is_file() for stem, _ in _FILES.values()):
        return "celeba-kaggle"
    if _looks_official(p):
        return "celeba-official"
    if (p / "celeba").is_dir() and _looks_official(p / "celeba"):
        return "celeba-torchvision"
    return None


def read_celeba(path: str | os.PathLike) -> LabelledImages:
    """Read CelebA's labels and metadata from any of the three layouts (images are not decoded).

    Returns a :class:`LabelledImages` with ``labels`` (N, A) uint8 in {0, 1} (CelebA's -1 -> 0),
    attribute names from the file's header (normally the 40 of ``CELEBA_ATTRIBUTES``), and
    ``partition`` (N,) int8, ``identity`` (N,) int32, ``landmarks`` (N, 5, 2) float32 and
    ``bbox`` (N, 4) int32, each None when its file is absent. Raises :class:`DataError` naming
    the file and line of anything malformed, and any listed image that is missing.
    """
    root = Path(path)
    if root.is_file():
        raise DataError(f"{root} is a file: pass the CelebA folder that contains it")
    layout = detect_celeba_layout(root)
    if layout is None:
        if not root.exists():
            raise DataError(f"{root} does not exist: expected a CelebA folder")
        raise DataError(f"{root} is not a CelebA dataset: expected {LAYOUTS_EXPECTED}")
    kaggle = layout == "celeba-kaggle"
    base = root / "celeba" if layout == "celeba-torchvision" else root
    found = {key: _find_file(base, stem, kaggle) for key, (stem, _) in _FILES.items()}

    attr_path = found["attributes"]
    if attr_path is None:
        name = "list_attr_celeba.csv" if kaggle else "list_attr_celeba.txt"
        searched = str(base) if kaggle else f"{base} and {base / 'Anno'}"
        raise DataError(
            f"{name} is missing: not found in {searched}; the attribute labels are required, "
            f"put CelebA's {name} there"
        )
    table = _read_table(attr_path, kind="attributes", csv_file=kaggle)
    _check_header(table, attr_path)
    filenames = table.filenames
    labels = _pm1_labels(table)
    _check_unique(table)
    image_dir = _find_images(base, kaggle)
    _check_images_exist(image_dir, filenames, attr_path)

    files = {"attributes": str(attr_path)}
    extra: dict[str, np.ndarray | None] = {}
    for key in ("partition", "identity", "landmarks", "bbox"):
        fpath = found[key]
        if fpath is None:
            extra[key] = None
            continue
        t = _read_table(fpath, kind=key, csv_file=kaggle)
        _check_unique(t)
        order = _align(t, filenames, attr_path)
        extra[key] = _convert(t, key)[order] if order is not None else _convert(t, key)
        files[key] = str(fpath)

    return LabelledImages(
        root=root,
        layout=layout,
        image_dir=image_dir,
        filenames=filenames,
        attr_names=table.columns,
        labels=labels,
        partition=extra["partition"],
        identity=extra["identity"],
        landmarks=extra["landmarks"],
        bbox=extra["bbox"],
        files=files,
    )


# ---------------------------------------------------------------------------------------------
# finding things


def _looks_official(d: Path) -> bool:
    if any((d / sub / "list_attr_celeba.txt").is_file() for sub in ("", "Anno")):
        return True
    return any(
        (d / sub / IMAGE_FOLDER).is_dir() or (d / sub / f"{IMAGE_FOLDER}.zip").is_file()
        for sub in _IMAGE_SUBDIRS
    )


def _find_file(base: Path, stem: str, kaggle: bool) -> Path | None:
    if kaggle:
        p = base / f"{stem}.csv"
        return p if p.is_file() else None
    for sub in _TEXT_SUBDIRS:
        p = base / sub / f"{stem}.txt"
        if p.is_file():
            return p
    return None


def _find_images(base: Path, kaggle: bool) -> Path:
    for sub in _IMAGE_SUBDIRS:
        d = base / sub / IMAGE_FOLDER
        if d.is_dir():
            # unzipping img_align_celeba.zip into img_align_celeba/ nests it (Kaggle ships so)
            nested = d / IMAGE_FOLDER
            return nested if nested.is_dir() else d
    for sub in _IMAGE_SUBDIRS:
        z = base / sub / f"{IMAGE_FOLDER}.zip"
        if z.is_file():
            raise DataError(
                f"the images are still zipped: unzip {z} in {z.parent} so that "
                f"{z.parent / IMAGE_FOLDER}/000001.jpg exists"
            )
    where = f"{base / IMAGE_FOLDER}/{IMAGE_FOLDER}/" if kaggle else f"{base / IMAGE_FOLDER}/"
    raise DataError(
        f"no image folder: expected CelebA's aligned images in {where}; "
        f"download and unzip {IMAGE_FOLDER}.zip there"
    )


def _check_images_exist(image_dir: Path, filenames: list[str], attr_path: Path) -> None:
    # One directory listing instead of 200k stat calls.
    with os.scandir(image_dir) as it:
        present = {e.name for e in it}
    missing = [
        f for f in filenames if f not in present and ("/" not in f or not (image_dir / f).exists())
    ]
    if not missing:
        return
    some = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    if not present:
        raise DataError(
            f"the image folder {image_dir} is empty but {attr_path.name} lists {len(filenames)} "
            f"images: extract {IMAGE_FOLDER}.zip into it"
        )
    raise DataError(
        f"{len(missing)} of the {len(filenames)} images listed in {attr_path} are missing from "
        f"{image_dir} (e.g. {some}): the image folder is incomplete; extract "
        f"{IMAGE_FOLDER}.zip again, or remove those rows from {attr_path.name}"
    )


# ---------------------------------------------------------------------------------------------
# parsing


@dataclass
class _Table:
    """One metadata file: filenames, the value columns' names and their values as text."""

    path: Path
    kind: str
    columns: list[str]  # value columns (no image column); [kind] for headerless files
    filenames: list[str]
    values: list[str]  # flat, row-major, len(filenames) * len(columns)
    lines: list[int]  # 1-based line number of each row
    header_line: int | None  # 1-based line of the header, None when there is none

    def where(self, row: int) -> str:
        return f"{self.path} line {self.lines[row]} ({self.filenames[row]})"


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not a text file (byte {e.start} is not UTF-8): "
            "is it the right file, or still compressed?"
        ) from None


def _read_table(path: Path, kind: str, csv_file: bool) -> _Table:
    if csv_file:
        return _read_csv_table(path, kind)
    return _read_text_table(path, kind)


def _read_text_table(path: Path, kind: str) -> _Table:
    text = _read_text(path)
    if not text or text.isspace():
        raise DataError(f"{path} is empty: download the file again")
    lines = text.splitlines()
    headerless = kind in ("partition", "identity")
    if headerless:
        columns, header_line, start, count = [kind], None, 0, None
    else:
        # line 1: the number of images; line 2: the column names; then one row per image
        first = lines[0].split()
        if len(first) != 1 or not first[0].isdigit():
            raise DataError(
                f"{path} line 1 should be the number of images (CelebA's format), found "
                f"{lines[0][:60]!r}: add the count line, or use a labels.csv folder dataset"
            )
        count = int(first[0])
        if len(lines) < 2 or not lines[1].split():
            raise DataError(f"{path} line 2 should hold the column names and is empty")
        columns = lines[1].split()
        if kind == "bbox" and columns[:1] == ["image_id"]:
            columns = columns[1:]  # bbox's header names the image column, the others don't
        header_line, start = 2, 2

    width = len(columns) + 1
    filenames: list[str] = []
    values: list[str] = []
    linenos: list[int] = []
    for n in range(start, len(lines)):
        toks = lines[n].split()
        if not toks:
            continue
        if len(toks) != width:
            raise _width_error(path, kind, n + 1, toks, columns, header_line)
        filenames.append(toks[0])
        del toks[0]
        values += toks
        linenos.append(n + 1)
    table = _Table(path, kind, columns, filenames, values, linenos, header_line)
    if not filenames:
        raise DataError(f"{path} has no image rows: download the file again")
    if count is not None and count != len(filenames):
        raise DataError(
            f"{path} line 1 says {count} images but the file has {len(filenames)} rows: the file "
            "is truncated or was edited; download it again (or correct line 1 if you removed "
            "rows on purpose)"
        )
    return table


def _read_csv_table(path: Path, kind: str) -> _Table:
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    while header is not None and not header:
        header = next(reader, None)
    if header is None:
        raise DataError(f"{path} is empty: download the file again")
    header = [h.strip() for h in header]
    columns = header[1:]
    header_line = reader.line_num
    width = len(header)
    filenames: list[str] = []
    values: list[str] = []
    linenos: list[int] = []
    for toks in reader:
        if not toks:
            continue
        if len(toks) != width:
            raise _width_error(path, kind, reader.line_num, toks, columns, header_line, ",")
        filenames.append(toks[0])
        del toks[0]
        values += toks
        linenos.append(reader.line_num)
    if not columns:
        raise DataError(
            f"{path} line {header_line}: the header names no value columns "
            f"(found {','.join(header)!r}); expected image_id followed by the columns"
        )
    if not filenames:
        raise DataError(f"{path} has no image rows: download the file again")
    return _Table(path, kind, columns, filenames, values, linenos, header_line)


def _width_error(
    path: Path,
    kind: str,
    lineno: int,
    toks: list[str],
    columns: list[str],
    header_line: int | None,
    sep: str = " ",
) -> DataError:
    found, expected = len(toks) - 1, len(columns)
    what = f"{path} line {lineno} ({toks[0]})"
    if header_line is None:
        return DataError(
            f"{what} has {found} values, expected 1: each line is 'FILENAME VALUE'; "
            "fix or remove that line"
        )
    msg = (
        f"{what} has {found} values but the header on line {header_line} has {expected} names: "
        "every row needs one value per header name"
    )
    if kind == "attributes" and found == len(CELEBA_ATTRIBUTES) and expected < found:
        lost = [a for a in CELEBA_ATTRIBUTES if a not in columns]
        if set(columns) <= set(CELEBA_ATTRIBUTES) and lost:
            return DataError(
                f"{path} line {header_line}: the header has {expected} names, expected "
                f"{len(CELEBA_ATTRIBUTES)} (missing {', '.join(lost)}) while the rows have "
                f"{found} values (line {lineno}, {toks[0]}): restore the header line from "
                "CelebA's original file"
            )
    if kind == "attributes":
        msg += "; fix that row, or the header if a name is missing"
    else:
        msg += "; fix that row, or download the file again"
    return DataError(msg)


def _check_header(table: _Table, path: Path) -> None:
    seen: set[str] = set()
    for name in table.columns:
        if name in seen:
            raise DataError(
                f"{path} line {table.header_line}: the attribute name {name!r} appears twice; "
                "attribute names must be unique"
            )
        seen.add(name)


def _check_unique(table: _Table) -> None:
    if len(set(table.filenames)) == len(table.filenames):
        return
    first: dict[str, int] = {}
    for i, f in enumerate(table.filenames):
        if f in first:
            raise DataError(
                f"{table.path} lists {f} twice (lines {table.lines[first[f]]} and "
                f"{table.lines[i]}): each image must appear once; remove the duplicate row"
            )
        first[f] = i


def _pm1_labels(table: _Table) -> np.ndarray:
    """The -1/1 attribute values as (N, A) uint8 0/1, without parsing 8M ints in Python."""
    values, a = table.values, len(table.columns)
    if not set(values) <= {"1", "-1"}:
        for k, v in enumerate(values):
            if v not in ("1", "-1"):
                raise DataError(
                    f"{table.where(k // a)}: {table.columns[k % a]} is {v!r}; CelebA attribute "
                    "values must be -1 or 1 (for 0/1 labels use a folder with labels.csv)"
                )
    # Joined, each value is "1" or "-1": every '1' is one value, negative iff '-' precedes it.
    chars = np.frombuffer((" " + "".join(values)).encode("ascii"), dtype=np.uint8)
    ones = np.flatnonzero(chars == ord("1"))
    labels = (chars[ones - 1] != ord("-")).astype(np.uint8)
    return labels.reshape(len(table.filenames), a)


def _align(table: _Table, ref: list[str], attr_path: Path) -> np.ndarray | None:
    """Row order that puts ``table`` in the attribute file's order (None: already in it)."""
    if table.filenames == ref:
        return None
    pos = {f: i for i, f in enumerate(table.filenames)}
    refset = set(ref)
    missing = [f for f in ref if f not in pos]
    extra = [f for f in table.filenames if f not in refset]
    if missing or extra:
        parts = []
        if missing:
            eg = ", ".join(missing[:3])
            parts.append(f"it lacks {_n_images(missing)} of the attribute file (e.g. {eg})")
        if extra:
            eg = ", ".join(extra[:3])
            parts.append(f"it has {_n_images(extra)} the attribute file lacks (e.g. {eg})")
        raise DataError(
            f"{table.path} covers a different set of images than {attr_path}: "
            f"{' and '.join(parts)}; use the files of one CelebA download, or delete "
            f"{table.path.name} to go without {_FILES[table.kind][1]}"
        )
    return np.fromiter((pos[f] for f in ref), dtype=np.int64, count=len(ref))


def _n_images(names: list[str]) -> str:
    return f"{len(names)} image{'s' if len(names) != 1 else ''}"


def _convert(table: _Table, kind: str) -> np.ndarray:
    n, w = len(table.filenames), len(table.columns)
    expected = {"landmarks": _LANDMARK_COLUMNS, "bbox": _BBOX_COLUMNS}.get(kind)
    if expected is not None and table.columns != expected:
        raise DataError(
            f"{table.path} line {table.header_line}: expected the columns {' '.join(expected)}, "
            f"found {' '.join(table.columns)}; download the file again"
        )
    parse = float if kind == "landmarks" else int
    try:
        arr = np.array(list(map(parse, table.values)))
    except ValueError:
        for k, v in enumerate(table.values):
            try:
                parse(v)
            except ValueError:
                raise DataError(
                    f"{table.where(k // w)}: {table.columns[k % w]} is {v!r}, expected "
                    f"{'a number' if parse is float else 'an integer'}"
                ) from None
        raise
    if kind == "partition":
        bad = np.flatnonzero((arr < 0) | (arr > 2))
        if bad.size:
            raise DataError(
                f"{table.where(int(bad[0]))}: partition is {table.values[bad[0]]!r}, expected "
                "0 (train), 1 (valid) or 2 (test)"
            )
        return arr.astype(np.int8)
    if kind in ("identity", "bbox"):
        info = np.iinfo(np.int32)
        bad = np.flatnonzero((arr < info.min) | (arr > info.max))
        if bad.size:
            raise DataError(
                f"{table.where(int(bad[0]) // w)}: {table.columns[bad[0] % w]} is "
                f"{table.values[bad[0]]!r}, which does not fit in 32 bits"
            )
        arr = arr.astype(np.int32)
        return arr if kind == "identity" else arr.reshape(n, 4)
    return arr.astype(np.float32).reshape(n, len(LANDMARK_NAMES), 2)

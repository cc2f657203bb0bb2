"""Image folders with labels: a folder plus a labels CSV, or a positive and a negative folder.

The CSV has a header ``filename,attr1,attr2,...`` and one row per image; values are 0/1, -1/1,
true/false or yes/no (any case, spaces around allowed). ``partition`` (0/1/2 or
train/valid/test) and ``identity`` (integer, -1 unknown) columns are recognised and are not
attributes. Filenames are relative to the image folder and may contain subfolders.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path, PurePosixPath

import numpy as np

from conceptvae.data import LabelledImages
from conceptvae.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")

_POSITIVE = {"1": 1, "true": 1, "yes": 1}
_NEGATIVE = {"0": 0, "-1": 0, "false": 0, "no": 0}
_ALLOWED = "0/1, -1/1, true/false or yes/no"
_PARTITIONS = {
    "0": 0, "train": 0,
    "1": 1, "valid": 1, "val": 1, "validation": 1,
    "2": 2, "test": 2,
}  # fmt: skip
_FILENAME_COLUMNS = ("filename", "image_id")


def read_folder(path: str | os.PathLike, labels: str | os.PathLike | None = None) -> LabelledImages:
    """Read a folder of images labelled by a CSV (``PATH/labels.csv`` unless ``labels`` is given).

    Returns a :class:`LabelledImages` (layout ``folder-csv``) with ``labels`` (N, A) uint8 0/1 in
    the CSV's row order, ``partition`` (N,) int8 / ``identity`` (N,) int32 when the CSV has those
    columns. Raises :class:`DataError` naming the CSV, line and filename of any bad row.
    """
    root = Path(path)
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise DataError(f"{root} {what}: expected a folder of images with a labels.csv")
    csv_path = Path(labels) if labels is not None else root / "labels.csv"
    if not csv_path.is_file():
        hint = "pass the right labels path" if labels is not None else "or pass labels=PATH.csv"
        hint += " (--labels on the command line)"
        raise DataError(
            f"no labels file {csv_path}: expected a CSV with the header filename,attr1,attr2,... "
            f"and one row per image; create it, {hint}"
        )
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{csv_path} is not a UTF-8 text file (byte {e.start}): save it as UTF-8 CSV"
        ) from None

    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    while header is not None and not any(h.strip() for h in header):
        header = next(reader, None)
    if header is None:
        raise DataError(
            f"{csv_path} is empty: expected the header filename,attr1,attr2,... and one row per "
            "image"
        )
    hline = reader.line_num
    header = [h.strip() for h in header]
    if header[0].lower() not in _FILENAME_COLUMNS:
        raise DataError(
            f"{csv_path} line {hline}: the first column must be 'filename', found "
            f"{header[0]!r}; the header is filename,attr1,attr2,..."
        )
    seen: set[str] = set()
    for name in header[1:]:
        if not name:
            raise DataError(f"{csv_path} line {hline}: a column has no name; name every column")
        if name.lower() in seen:
            raise DataError(
                f"{csv_path} line {hline}: the column {name!r} appears twice; "
                "column names must be unique"
            )
        seen.add(name.lower())
    special = {h.lower(): j for j, h in enumerate(header) if h.lower() in ("partition", "identity")}
    attr_cols = [j for j in range(1, len(header)) if j not in special.values()]
    if not attr_cols:
        raise DataError(
            f"{csv_path} line {hline}: no attribute columns (found {','.join(header)}); add at "
            "least one column of 0/1 labels after filename"
        )

    filenames: list[str] = []
    rows: list[list[int]] = []
    partition: list[int] = []
    identity: list[int] = []
    first_line: dict[str, int] = {}
    negative_spelling: dict[int, tuple[str, int]] = {}  # column -> ("0" or "-1", line)
    for toks in reader:
        if not any(t.strip() for t in toks):
            continue
        line = reader.line_num
        name = toks[0].strip()
        where = f"{csv_path} line {line} ({name or 'no filename'})"
        if len(toks) != len(header):
            raise DataError(
                f"{where} has {len(toks)} columns, expected {len(header)} as in the header on "
                f"line {hline}; fix that row"
            )
        if not name:
            raise DataError(f"{csv_path} line {line}: the filename is empty; fill it in")
        if PurePosixPath(name).is_absolute():
            raise DataError(
                f"{where}: the filename is absolute; filenames must be relative to {root}"
            )
        if name in first_line:
            raise DataError(
                f"{where}: {name} is listed twice (lines {first_line[name]} and {line}); each "
                "image must appear once, remove one row"
            )
        first_line[name] = line
        row = []
        for j in attr_cols:
            v = toks[j].strip().lower()
            if v in _POSITIVE:
                row.append(1)
                continue
            if v not in _NEGATIVE:
                raise DataError(
                    f"{where}: {header[j]} is {toks[j]!r}; allowed values are {_ALLOWED}"
                )
            if v in ("0", "-1"):
                other = negative_spelling.setdefault(j, (v, line))
                if other[0] != v:
                    raise DataError(
                        f"{where}: {header[j]} is {v} but line {other[1]} uses {other[0]} for "
                        f"the negative label; with both 0 and -1 in one column it is ambiguous "
                        f"which means 'no', use one spelling per column"
                    )
            row.append(0)
        rows.append(row)
        if "partition" in special:
            raw = toks[special["partition"]]
            p = _PARTITIONS.get(raw.strip().lower())
            if p is None:
                raise DataError(
                    f"{where}: partition is {raw!r}; allowed values are 0/1/2 or train/valid/test"
                )
            partition.append(p)
        if "identity" in special:
            raw = toks[special["identity"]]
            try:
                ident = int(raw.strip())
            except ValueError:
                ident = None
            if ident is None or not -1 <= ident < 2**31:
                raise DataError(
                    f"{where}: identity is {raw!r}; expected an integer person id (-1 for unknown)"
                )
            identity.append(ident)
        filenames.append(name)

    if not filenames:
        raise DataError(f"{csv_path} has a header but no rows: add one row per image")
    _check_images_exist(root, filenames, csv_path, first_line)
    files = {"labels": str(csv_path)}
    return LabelledImages(
        root=root,
        layout="folder-csv",
        image_dir=root,
        filenames=filenames,
        attr_names=[header[j] for j in attr_cols],
        labels=np.array(rows, dtype=np.uint8).reshape(len(filenames), len(attr_cols)),
        partition=np.array(partition, dtype=np.int8) if partition else None,
        identity=np.array(identity, dtype=np.int32) if identity else None,
        files=files,
    )


def read_pair(
    positive: str | os.PathLike, negative: str | os.PathLike, name: str = "Attribute"
) -> LabelledImages:
    """Label every image under ``positive`` 1 and every image under ``negative`` 0.

    Images are found recursively by extension (jpg, jpeg, png, webp, bmp, tif, tiff; any case).
    Returns a :class:`LabelledImages` (layout ``folder-pair``) with one attribute ``name``,
    ``image_dir`` the two folders' common parent and filenames relative to it, positives first.
    """
    if not name or not name.strip() or "," in name:
        raise DataError(f"attribute name {name!r} is not usable: give a non-empty name, no commas")
    pos, neg = Path(positive), Path(negative)
    for role, d in (("positive", pos), ("negative", neg)):
        if not d.is_dir():
            what = "is not a folder" if d.exists() else "does not exist"
            raise DataError(f"the {role} folder {d} {what}: pass a folder of images")
    pos_abs, neg_abs = Path(os.path.realpath(pos)), Path(os.path.realpath(neg))
    if pos_abs == neg_abs:
        raise DataError(f"the positive and negative folders are the same ({pos}): pass two folders")
    for inner, outer, a, b in ((pos_abs, neg_abs, pos, neg), (neg_abs, pos_abs, neg, pos)):
        if outer in inner.parents:
            raise DataError(
                f"{a} is inside {b}: its images would get both labels; use two separate folders"
            )
    found = {}
    for role, d, given in (("positive", pos_abs, pos), ("negative", neg_abs, neg)):
        files = _list_images(d)
        if not files:
            raise DataError(
                f"the {role} folder {given} has no images ({', '.join(IMAGE_EXTENSIONS)}): "
                "put images in it"
            )
        found[role] = files
    real_pos = {os.path.realpath(f): f for f in found["positive"]}
    for f in found["negative"]:
        other = real_pos.get(os.path.realpath(f))
        if other is not None:
            raise DataError(
                f"the same file is in both folders ({other} and {f}): an image cannot be both "
                f"positive and negative for {name}; remove one"
            )

    image_dir = Path(os.path.commonpath([pos_abs, neg_abs]))
    filenames = [
        Path(f).relative_to(image_dir).as_posix() for f in found["positive"] + found["negative"]
    ]
    labels = np.zeros((len(filenames), 1), dtype=np.uint8)
    labels[: len(found["positive"])] = 1
    return LabelledImages(
        root=image_dir,
        layout="folder-pair",
        image_dir=image_dir,
        filenames=filenames,
        attr_names=[name],
        labels=labels,
        files={"positive": str(pos), "negative": str(neg)},
    )


def read_photos(path: str | os.PathLike) -> LabelledImages:
    """Every image under ``path`` (recursively, by extension), with no labels: a
    :class:`LabelledImages` of layout ``folder-photos`` with no attributes, for the steps that
    label photos themselves (``conceptvae vectors --recalibrate-only``)."""
    root = Path(path)
    files = _list_images(root)
    if not files:
        raise DataError(
            f"{root} has no images ({', '.join(IMAGE_EXTENSIONS)}) and no labels.csv: put photos "
            "in it"
        )
    return LabelledImages(
        root=root,
        layout="folder-photos",
        image_dir=root,
        filenames=[Path(f).relative_to(root).as_posix() for f in files],
        attr_names=[],
        labels=np.zeros((len(files), 0), dtype=np.uint8),
    )


def _list_images(folder: Path) -> list[str]:
    """Image files under ``folder``, recursively, sorted, as absolute path strings."""
    out = []
    for dirpath, dirnames, names in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [
            os.path.join(dirpath, n)
            for n in names
            if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(out)


def _check_images_exist(
    root: Path, filenames: list[str], csv_path: Path, lines: dict[str, int]
) -> None:
    # One listing per folder instead of a stat per image.
    listing: dict[str, set[str] | None] = {}
    missing = []
    for f in filenames:
        parent, _, base = f.rpartition("/")
        if parent not in listing:
            d = root / parent
            try:
                with os.scandir(d) as it:
                    listing[parent] = {e.name for e in it}
            except (FileNotFoundError, NotADirectoryError):
                listing[parent] = None
        names = listing[parent]
        if names is None or base not in names:
            missing.append(f)
    if missing:
        f = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(
            f"{csv_path} line {lines[f]} ({f}): the image {root / f} does not exist{more}; "
            f"{len(missing)} of {len(filenames)} listed images are missing; fix the filenames "
            f"(relative to {root}) or remove those rows"
        )

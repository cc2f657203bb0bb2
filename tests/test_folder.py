import os

import numpy as np
import pytest
from celeba_fixtures import tiny_jpeg

from conceptvae.data import open_dataset
from conceptvae.data.folder import read_folder, read_pair
from conceptvae.errors import DataError


def _folder(root, csv_text, images=None, labels_name="labels.csv"):
    """Write ``images`` (default: every filename in the CSV) and the CSV into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [r.split(",") for r in csv_text.strip().splitlines()[1:]]
    if images is None:
        images = [r[0].strip() for r in rows if r and r[0].strip()]
    for i, name in enumerate(images):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(tiny_jpeg(i, (8, 8)))
    (root / labels_name).write_text(csv_text)
    return root / labels_name


def test_every_value_spelling(tmp_path):
    _folder(
        tmp_path,
        "filename,Smiling,Glasses,Hat,Beard\n"
        "a.jpg,1,-1,true,yes\n"
        "b.jpg,0,1, FALSE ,No\n"
        "c.jpg, 1 ,-1,True,YES\n",
    )
    ds = read_folder(tmp_path)
    assert ds.layout == "folder-csv" and ds.image_dir == tmp_path
    assert ds.filenames == ["a.jpg", "b.jpg", "c.jpg"]
    assert ds.attr_names == ["Smiling", "Glasses", "Hat", "Beard"]
    assert ds.labels.dtype == np.uint8
    np.testing.assert_array_equal(ds.labels, [[1, 0, 1, 1], [0, 1, 0, 0], [1, 0, 1, 1]])
    assert ds.partition is None and ds.identity is None


def test_partition_and_identity_columns_are_not_attributes(tmp_path):
    _folder(
        tmp_path,
        "filename,Smiling,partition,identity\n"
        "a.jpg,1,train,7\n"
        "b.jpg,0,VALID,7\n"
        "c.jpg,1,test,-1\n"
        "d.jpg,0,2,12\n"
        "e.jpg,0,0,3\n",
    )
    ds = read_folder(tmp_path)
    assert ds.attr_names == ["Smiling"]
    assert ds.partition.dtype == np.int8 and ds.partition.tolist() == [0, 1, 2, 2, 0]
    assert ds.identity.dtype == np.int32 and ds.identity.tolist() == [7, 7, -1, 12, 3]


def test_filenames_in_subfolders_and_utf8_bom_crlf(tmp_path):
    text = "\ufefffilename,Smiling\r\nmen/a.jpg,1\r\nwomen/old/b.png,0\r\n"
    _folder(tmp_path, text, images=["men/a.jpg", "women/old/b.png"])
    ds = read_folder(tmp_path)
    assert ds.filenames == ["men/a.jpg", "women/old/b.png"]
    assert ds.attr_names == ["Smiling"]
    assert ds.image_path(1) == tmp_path / "women/old/b.png" and ds.image_path(1).is_file()


def test_labels_path_given_and_open_dataset(tmp_path):
    csv_path = _folder(tmp_path / "imgs", "filename,Hat\na.jpg,1\nb.jpg,0\n", labels_name="x.csv")
    moved = tmp_path / "elsewhere.csv"
    os.replace(csv_path, moved)
    ds = read_folder(tmp_path / "imgs", labels=moved)
    assert ds.labels[:, 0].tolist() == [1, 0] and ds.files["labels"] == str(moved)
    assert open_dataset(tmp_path / "imgs", labels=moved).labels[:, 0].tolist() == [1, 0]
    _folder(tmp_path / "b", "filename,Hat\nc.jpg,0\n")
    assert open_dataset(tmp_path / "b").layout == "folder-csv"


def _error(tmp_path, csv_text, images=None, **kw):
    csv_path = _folder(tmp_path, csv_text, images=images)
    with pytest.raises(DataError) as e:
        read_folder(tmp_path, **kw)
    return csv_path, str(e.value)


@pytest.mark.parametrize("value", ["2", "maybe", "", "0.5"])
def test_unknown_value(tmp_path, value):
    path, msg = _error(tmp_path, f"filename,Smiling,Hat\na.jpg,1,0\nb.jpg,{value},1\n")
    assert f"{path} line 3 (b.jpg): Smiling is {value!r}" in msg
    assert "allowed values are 0/1, -1/1, true/false or yes/no" in msg


def test_mixing_0_and_minus_1_in_a_column_is_ambiguous(tmp_path):
    path, msg = _error(tmp_path, "filename,Smiling\na.jpg,-1\nb.jpg,1\nc.jpg,0\n")
    assert f"{path} line 4 (c.jpg): Smiling is 0 but line 2 uses -1" in msg
    assert "ambiguous" in msg


def test_missing_image(tmp_path):
    text = "filename,Smiling\na.jpg,1\nsub/b.jpg,0\nc.jpg,1\n"
    path, msg = _error(tmp_path, text, images=["a.jpg", "c.jpg"])
    assert f"{path} line 3 (sub/b.jpg): the image {tmp_path / 'sub/b.jpg'} does not exist" in msg
    assert "1 of 3 listed images are missing" in msg


def test_duplicate_filename(tmp_path):
    path, msg = _error(tmp_path, "filename,Smiling\na.jpg,1\nb.jpg,0\na.jpg,0\n")
    assert f"{path} line 4 (a.jpg): a.jpg is listed twice (lines 2 and 4)" in msg


def test_wrong_number_of_columns(tmp_path):
    path, msg = _error(tmp_path, "filename,Smiling,Hat\na.jpg,1,0\nb.jpg,1\n")
    assert f"{path} line 3 (b.jpg) has 2 columns, expected 3 as in the header on line 1" in msg


def test_no_attribute_columns(tmp_path):
    path, msg = _error(tmp_path, "filename,partition\na.jpg,0\n")
    assert f"{path} line 1: no attribute columns" in msg


def test_bad_partition_and_identity(tmp_path):
    path, msg = _error(tmp_path, "filename,Hat,partition\na.jpg,1,train\nb.jpg,1,dev\n")
    assert f"{path} line 3 (b.jpg): partition is 'dev'; allowed values are 0/1/2" in msg
    _, msg = _error(tmp_path / "i", "filename,Hat,identity\na.jpg,1,bob\n")
    assert "line 2 (a.jpg): identity is 'bob'; expected an integer" in msg


def test_empty_csv_header_only_and_missing_csv(tmp_path):
    path, msg = _error(tmp_path / "a", "")
    assert f"{path} is empty" in msg
    path, msg = _error(tmp_path / "b", "filename,Smiling\n")
    assert f"{path} has a header but no rows" in msg
    _, msg = _error(tmp_path / "c", "file,Smiling\na.jpg,1\n", images=["a.jpg"])
    assert "line 1: the first column must be 'filename', found 'file'" in msg
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match=r"no labels file .*labels\.csv: expected a CSV"):
        read_folder(tmp_path / "d")


# --- read_pair --------------------------------------------------------------------------------


def _images(folder, names):
    for i, n in enumerate(names):
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        (folder / n).write_bytes(tiny_jpeg(i, (8, 8)))


def test_pair_labels_recursive_and_case_insensitive(tmp_path):
    _images(tmp_path / "smile", ["b.JPG", "a.png", "deep/c.WebP", "notes.txt", ".hidden.jpg"])
    _images(tmp_path / "neutral", ["x.jpeg", "y.TIFF", "z.bmp"])
    ds = read_pair(tmp_path / "smile", tmp_path / "neutral", name="Smiling")
    assert ds.layout == "folder-pair" and ds.attr_names == ["Smiling"]
    assert ds.image_dir == tmp_path.resolve()
    assert ds.filenames == [
        "smile/a.png", "smile/b.JPG", "smile/deep/c.WebP",
        "neutral/x.jpeg", "neutral/y.TIFF", "neutral/z.bmp",
    ]  # fmt: skip
    assert ds.labels.dtype == np.uint8 and ds.labels[:, 0].tolist() == [1, 1, 1, 0, 0, 0]
    assert all(ds.image_path(i).is_file() for i in range(len(ds)))


def test_pair_errors(tmp_path):
    _images(tmp_path / "pos", ["a.jpg", "sub/c.jpg"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match=r"the negative folder .*nope does not exist"):
        read_pair(tmp_path / "pos", tmp_path / "nope")
    with pytest.raises(DataError, match=r"the negative folder .*empty has no images"):
        read_pair(tmp_path / "pos", tmp_path / "empty")
    with pytest.raises(DataError, match=r"inside .*pos: its images would get both labels"):
        read_pair(tmp_path / "pos", tmp_path / "pos" / "sub")
    _images(tmp_path / "neg", ["b.jpg"])
    os.symlink(tmp_path / "pos" / "a.jpg", tmp_path / "neg" / "a_link.jpg")
    with pytest.raises(DataError, match=r"the same file is in both folders .*a_link\.jpg"):
        read_pair(tmp_path / "pos", tmp_path / "neg", name="Smiling")


def test_photos_with_no_labels_only_where_asked(tmp_path):
    """A folder of photos with no labels.csv is read (recursively, hidden files skipped) only
    when the caller labels photos itself; otherwise it is not a dataset; a folder with no
    images says so."""
    for i, name in enumerate(["b.png", "a.JPG", "sub/c.jpeg", ".hidden.jpg", "notes.txt"]):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(tiny_jpeg(i, (8, 8)))
    with pytest.raises(DataError, match="is not a dataset"):
        open_dataset(tmp_path)
    ds = open_dataset(tmp_path, unlabelled=True)
    assert ds.layout == "folder-photos" and ds.image_dir == tmp_path
    assert ds.filenames == ["a.JPG", "b.png", "sub/c.jpeg"]
    assert ds.attr_names == [] and ds.labels.shape == (3, 0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty has no images .*put photos in it"):
        open_dataset(tmp_path / "empty", unlabelled=True)

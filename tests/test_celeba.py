import re

import numpy as np
import pytest
from celeba_fixtures import (
    LAYOUTS,
    attr_header,
    attr_row,
    delete_line,
    read_line,
    reorder_lines,
    replace_line,
    write_celeba,
)

from conceptvae.data import CELEBA_ATTRIBUTES, open_dataset
from conceptvae.data.celeba import detect_celeba_layout, read_celeba
from conceptvae.errors import DataError


def _assert_matches(ds, fx, identity=True):
    assert ds.filenames == fx.filenames
    assert ds.attr_names == list(CELEBA_ATTRIBUTES)
    assert ds.labels.dtype == np.uint8 and ds.labels.shape == (12, 40)
    np.testing.assert_array_equal(ds.labels, fx.labels)
    assert ds.partition.dtype == np.int8
    np.testing.assert_array_equal(ds.partition, fx.partition)
    assert ds.landmarks.dtype == np.float32 and ds.landmarks.shape == (12, 5, 2)
    np.testing.assert_array_equal(ds.landmarks, fx.landmarks)
    assert ds.bbox.dtype == np.int32
    np.testing.assert_array_equal(ds.bbox, fx.bbox)
    if identity:
        assert ds.identity.dtype == np.int32
        np.testing.assert_array_equal(ds.identity, fx.identity)
    assert ds.image_dir == fx.image_dir
    assert all(ds.image_path(i).is_file() for i in range(len(ds)))


def test_three_layouts_read_identically(tmp_path):
    read = {}
    for layout in LAYOUTS:
        fx = write_celeba(tmp_path / layout, layout)
        ds = read_celeba(fx.root)
        assert ds.layout == layout
        _assert_matches(ds, fx, identity=layout != "celeba-kaggle")
        read[layout] = ds
    off, tv, kg = (read[k] for k in LAYOUTS)
    for other in (tv, kg):
        assert other.filenames == off.filenames
        for key in ("labels", "partition", "landmarks", "bbox"):
            np.testing.assert_array_equal(getattr(other, key), getattr(off, key))
    np.testing.assert_array_equal(tv.identity, off.identity)
    assert kg.identity is None  # Kaggle ships no identity file
    assert kg.image_dir.parts[-2:] == ("img_align_celeba", "img_align_celeba")


def test_names_are_exactly_the_40_without_an_empty_41st(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    # the fixture really has the trailing space that gives torchvision's parser a 41st name
    assert read_line(fx.files["attributes"], 2).split(" ")[-1] == ""
    ds = read_celeba(tmp_path)
    assert len(ds.attr_names) == 40 and "" not in ds.attr_names
    assert ds.attr_names[0] == "5_o_Clock_Shadow" and ds.attr_names[-1] == "Young"


def test_fixture_files_keep_the_real_quirks_byte_for_byte(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    data = fx.files["attributes"].read_bytes()
    assert data.startswith(b"12\r\n5_o_Clock_Shadow Arched_Eyebrows ")
    assert b"Wearing_Necktie Young \r\n000001.jpg -1  1 " in data
    assert data.count(b"\r\n") == 14 and data.count(b"\n") == 14  # every line CRLF, no bare LF
    assert data.endswith(b"\r\n")
    row = re.compile(rb"^\d{6}\.jpg -?1( (-1| 1)){39}$")
    assert all(row.match(line) for line in data.split(b"\r\n")[2:-1])
    assert data.split(b"\r\n")[3].startswith(b"000002.jpg 1 ")  # unpadded first positive

    lm = fx.files["landmarks"].read_bytes().split(b"\r\n")
    assert lm[0] == b"12" and lm[1].split() == [
        b"lefteye_x", b"lefteye_y", b"righteye_x", b"righteye_y", b"nose_x",
        b"nose_y", b"leftmouth_x", b"leftmouth_y", b"rightmouth_x", b"rightmouth_y",
    ]  # fmt: skip
    assert re.match(rb"^000001\.jpg ( {3}\d\d| {2}\d{3}){10}$", lm[2])
    bb = fx.files["bbox"].read_bytes().split(b"\r\n")
    assert bb[1] == b"image_id x_1 y_1 width height"
    assert re.match(rb"^000001\.jpg ( {2,4}\d{1,3}){4}$", bb[2])
    assert fx.files["partition"].read_bytes().startswith(b"000001.jpg 0\r\n000002.jpg 0\r\n")
    assert re.match(rb"^000001\.jpg \d+\r\n", fx.files["identity"].read_bytes())


def test_optional_files_absent_give_none(tmp_path):
    write_celeba(tmp_path, "celeba-official", optional=())
    ds = read_celeba(tmp_path)
    assert (ds.partition, ds.identity, ds.landmarks, ds.bbox) == (None, None, None, None)
    assert ds.labels.shape == (12, 40)
    assert list(ds.files) == ["attributes"]


def test_google_drive_anno_eval_subfolders(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official", drive_subfolders=True)
    assert fx.files["attributes"].parent.name == "Anno"
    ds = read_celeba(tmp_path)
    _assert_matches(ds, fx)
    assert ds.files["partition"].endswith("Eval/list_eval_partition.txt")


def test_kaggle_flat_images_bom_and_crlf(tmp_path):
    fx = write_celeba(tmp_path, "celeba-kaggle", nested=False, bom=True, csv_eol="\r\n")
    ds = read_celeba(tmp_path)
    assert ds.image_dir == tmp_path / "img_align_celeba"
    assert ds.attr_names[0] == "5_o_Clock_Shadow"  # not "\ufeff..." from the BOM
    _assert_matches(ds, fx, identity=False)


def test_optional_files_are_matched_by_filename_not_row_order(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    order = np.random.default_rng(1).permutation(12)
    reorder_lines(fx.files["partition"], 1, order)
    reorder_lines(fx.files["landmarks"], 3, order)
    ds = read_celeba(tmp_path)
    np.testing.assert_array_equal(ds.partition, fx.partition)
    np.testing.assert_array_equal(ds.landmarks, fx.landmarks)


def test_custom_attribute_file_with_its_own_names(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official", optional=())
    names = ["Smiling", "Glasses", "Hat"]
    raw = fx.raw[:, :3]
    lines = [str(12), attr_header(names)] + [attr_row(f, r) for f, r in zip(fx.filenames, raw)]
    fx.files["attributes"].write_bytes("".join(x + "\r\n" for x in lines).encode())
    ds = read_celeba(tmp_path)
    assert ds.attr_names == names
    np.testing.assert_array_equal(ds.labels, (raw > 0).astype(np.uint8))


def test_detect_layout(tmp_path):
    for layout in LAYOUTS:
        write_celeba(tmp_path / layout, layout, n=2, optional=())
        assert detect_celeba_layout(tmp_path / layout) == layout
    (tmp_path / "empty").mkdir()
    assert detect_celeba_layout(tmp_path / "empty") is None
    assert detect_celeba_layout(tmp_path / "nope") is None


def test_open_dataset_dispatches_celeba(tmp_path):
    fx = write_celeba(tmp_path, "celeba-torchvision")
    ds = open_dataset(tmp_path)
    assert ds.layout == "celeba-torchvision"
    np.testing.assert_array_equal(ds.labels, fx.labels)


# --- bad input -------------------------------------------------------------------------------


def test_not_a_dataset_lists_the_layouts(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    msg = str(e.value)
    assert str(tmp_path) in msg and "not a CelebA dataset" in msg
    for expected in (
        "img_align_celeba/",
        "list_attr_celeba.txt",
        "celeba/",
        "list_attr_celeba.csv",
    ):
        assert expected in msg
    with pytest.raises(DataError, match="labels.csv.*prepared cache"):
        open_dataset(tmp_path)


def test_open_dataset_recognises_a_prepared_cache(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "images.npy").write_bytes(b"")
    with pytest.raises(DataError, match="prepared cache; open it with .*open_cache"):
        open_dataset(tmp_path)


def test_missing_path_and_file_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_celeba(tmp_path / "nope")
    fx = write_celeba(tmp_path, "celeba-official", n=2, optional=())
    with pytest.raises(DataError, match="is a file: pass the CelebA folder"):
        read_celeba(fx.files["attributes"])


def test_images_present_but_attribute_file_missing(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    fx.files["attributes"].unlink()
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    msg = str(e.value)
    assert "list_attr_celeba.txt is missing" in msg
    assert f"not found in {tmp_path} and {tmp_path / 'Anno'}" in msg


def test_kaggle_attribute_csv_missing(tmp_path):
    fx = write_celeba(tmp_path, "celeba-kaggle")
    fx.files["attributes"].unlink()
    with pytest.raises(DataError, match=r"list_attr_celeba\.csv is missing: not found in "):
        read_celeba(tmp_path)


def test_zipped_images_say_unzip(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official", n=2)
    for f in fx.image_dir.iterdir():
        f.unlink()
    fx.image_dir.rmdir()
    (tmp_path / "img_align_celeba.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match=r"still zipped: unzip .*img_align_celeba\.zip"):
        read_celeba(tmp_path)


def test_header_with_39_names(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    path = fx.files["attributes"]
    replace_line(path, 2, attr_header([a for a in CELEBA_ATTRIBUTES if a != "Smiling"]))
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    msg = str(e.value)
    assert f"{path} line 2: the header has 39 names, expected 40 (missing Smiling)" in msg
    assert "rows have 40 values" in msg


def test_row_with_a_wrong_value_count(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    path = fx.files["attributes"]
    replace_line(path, 5, attr_row("000003.jpg", fx.raw[2, :39]))
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    assert f"{path} line 5 (000003.jpg) has 39 values but the header on line 2 has 40 names" in str(
        e.value
    )


def test_kaggle_row_with_a_wrong_value_count(tmp_path):
    fx = write_celeba(tmp_path, "celeba-kaggle")
    path = fx.files["attributes"]
    replace_line(path, 4, read_line(path, 4) + ",1")
    with pytest.raises(DataError, match=r"line 4 \(000003\.jpg\) has 41 values but the header"):
        read_celeba(tmp_path)


def test_label_value_2(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    path = fx.files["attributes"]
    values = fx.raw[4].copy()
    values[31] = 2  # Smiling
    replace_line(path, 7, attr_row("000005.jpg", values))
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    msg = str(e.value)
    assert f"{path} line 7 (000005.jpg): Smiling is '2'" in msg
    assert "must be -1 or 1" in msg


def test_image_listed_but_absent(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    (fx.image_dir / "000004.jpg").unlink()
    (fx.image_dir / "000009.jpg").unlink()
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    msg = str(e.value)
    assert "2 of the 12 images listed in" in msg and "000004.jpg, 000009.jpg" in msg
    assert str(fx.image_dir) in msg


def test_duplicate_filename_in_attribute_file(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    path = fx.files["attributes"]
    replace_line(path, 6, attr_row("000002.jpg", fx.raw[3]))
    with pytest.raises(DataError, match=r"lists 000002\.jpg twice \(lines 4 and 6\)"):
        read_celeba(tmp_path)


def test_count_line_disagrees_with_rows(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    path = fx.files["attributes"]
    delete_line(path, 14)  # a truncated download
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    assert f"{path} line 1 says 12 images but the file has 11 rows" in str(e.value)
    assert "download it again" in str(e.value)


def test_missing_count_line(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    delete_line(fx.files["attributes"], 1)
    with pytest.raises(DataError, match="line 1 should be the number of images"):
        read_celeba(tmp_path)


def test_optional_file_covering_other_images(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    path = fx.files["partition"]
    replace_line(path, 12, "999999.jpg 2")
    with pytest.raises(DataError) as e:
        read_celeba(tmp_path)
    msg = str(e.value)
    assert f"{path} covers a different set of images than {fx.files['attributes']}" in msg
    assert "it lacks 1 image of the attribute file (e.g. 000012.jpg)" in msg
    assert "it has 1 image the attribute file lacks (e.g. 999999.jpg)" in msg
    assert "delete list_eval_partition.txt" in msg


def test_bad_partition_and_landmark_values(tmp_path):
    fx = write_celeba(tmp_path, "celeba-official")
    replace_line(fx.files["partition"], 3, "000003.jpg 3")
    with pytest.raises(DataError, match=r"line 3 \(000003\.jpg\): partition is '3', expected 0"):
        read_celeba(tmp_path)
    replace_line(fx.files["partition"], 3, "000003.jpg 0")
    replace_line(fx.files["landmarks"], 4, read_line(fx.files["landmarks"], 4)[:-5] + "    x")
    with pytest.raises(DataError, match=r"celeba\.txt line 4 \(000002\.jpg\): rightmouth_y is 'x'"):
        read_celeba(tmp_path)

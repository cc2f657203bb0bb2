import json

import numpy as np
from click.testing import CliRunner

from conceptvae.cli import cli


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    for f in fragments:
        assert f in err, err


def test_synth_prepare_info_end_to_end(tmp_path):
    data, cache = tmp_path / "synth", tmp_path / "cache"
    r = run("synth", data, "--n", 24, "--seed", 3, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert len(list((data / "img_align_celeba").glob("*.jpg"))) == 24

    r = run("info", data)
    assert r.exit_code == 0, r.output
    assert "layout: celeba-official" in r.output
    assert "images: 24" in r.output
    assert "Smiling" in r.output and "Eyeglasses" in r.output

    r = run("prepare", data, cache, "--image-size", 32, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert "prepared 24 images at 32 px" in r.output
    assert np.load(cache / "images.npy", mmap_mode="r").shape == (24, 3, 32, 32)

    r = run("info", cache, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert summary["kind"] == "prepared cache"
    assert summary["images"] == 24
    assert sum(summary["partitions"].values()) == 24
    names = [a["name"] for a in summary["attributes"]]
    assert len(names) == 40 and names[31] == "Smiling"
    labels = np.load(cache / "labels.npy")
    assert [a["positives"] for a in summary["attributes"]] == labels.sum(0).tolist()


def test_info_on_a_path_that_is_not_a_dataset(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    assert_one_line_error(run("info", tmp_path), str(tmp_path), "not a dataset")


def test_synth_refuses_a_non_empty_folder_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert_one_line_error(run("synth", out, "--n", 2), "not empty", "--force")
    assert (out / "keep.txt").read_text() == "precious"


def test_prepare_pair_form_needs_both_folders(tmp_path):
    r = run("prepare", tmp_path / "cache", "--positive", tmp_path)
    assert r.exit_code == 2
    assert "--positive and --negative go together" in r.output


def test_a_plain_script_without_main_guard_can_use_worker_processes(tmp_path):
    # Users write top-level scripts; worker processes must not re-run them (plain spawn would),
    # and must not inherit OpenCV's busy thread pool (fork did: the workers deadlocked).
    import subprocess
    import sys

    script = tmp_path / "make_data.py"
    script.write_text(
        "import cv2, numpy as np\n"
        "for _ in range(20): cv2.GaussianBlur(np.ones((2000, 2000, 3), np.uint8), (31, 31), 9)\n"
        "from conceptvae.data import open_dataset\n"
        "from conceptvae.data.cache import prepare\n"
        "from conceptvae.data.synth import write_synthfaces\n"
        "write_synthfaces('synth', n=40, seed=1, workers=2, progress=False)\n"
        "ds = open_dataset('synth')\n"
        "cache = prepare(ds, 'cache', image_size=16, workers=2, progress=False)\n"
        "print('rows', len(cache))\n"
    )
    r = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "rows 40"

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


# ---------------------------------------------------------------------------------------------
# one vocabulary (docs/cli.md): the same option means the same thing in every command


def _params(command):
    return {p.name: p for p in command.params}


def test_shared_options_mean_the_same_in_every_command():
    from conceptvae.cli import DeviceType

    makes_output = []
    for name, command in cli.commands.items():
        params = _params(command)
        if "output" in params:
            assert params["output"].opts == ["-o", "--output"], name
            makes_output.append(name)
        if name in ("synth", "prepare"):
            makes_output.append(name)  # OUT is their positional argument
        if "workers" in params:
            assert params["workers"].default == 0, name  # 0: all cores, everywhere
        if "device" in params:
            assert isinstance(params["device"].type, DeviceType), name
            assert params["device"].default == "auto", name
        if "n" in params:
            assert params["n"].opts == ["-n", "--n"], name
    assert sorted(makes_output) == [
        "demo", "edit", "evaluate", "grid", "interpolate", "prepare", "reconstruct", "sample",
        "synth", "train",
    ]  # fmt: skip
    for name in makes_output:  # nothing is overwritten without it
        assert "force" in _params(cli.commands[name]), name
    assert _params(cli.commands["evaluate"])["n_faces"].opts == ["-n", "--n-faces"]
    out = _params(cli.commands["train"])["out_alias"]
    assert out.opts == ["--out"] and out.hidden  # the old name still works, unadvertised


def test_device_accepts_cuda_n_and_refuses_unknown_names_in_one_line(tmp_path):
    import torch

    from conceptvae.cli import DeviceType

    for good in ("auto", "cpu", "cuda", "cuda:0", "cuda:1", " CUDA:12 "):
        assert DeviceType().convert(good, None, None) == good.strip().lower()
    for bad in ("gpu", "cuda:", "cuda:x", "cuda1", "mps"):
        r = run("sample", "synthfaces64", "-o", tmp_path / "s.png", "--device", bad)
        assert r.exit_code == 2 and "is not a device: use auto, cpu, cuda or cuda:N" in r.output
    if not torch.cuda.is_available():  # cuda:1 reaches the device check and is told why not
        r = run("sample", "synthfaces64", "-o", tmp_path / "s.png", "--device", "cuda:1")
        assert_one_line_error(r, "--device cuda:1", "CUDA is not available")
    assert not (tmp_path / "s.png").exists()


def test_a_picture_is_not_overwritten_without_force(tmp_path):
    png = tmp_path / "s.png"
    r = run("sample", "synthfaces64", "-n", 4, "--seed", 0, "-o", png, "--device", "cpu")
    assert r.exit_code == 0, r.output
    first = png.read_bytes()
    r = run("sample", "synthfaces64", "-n", 4, "--seed", 1, "-o", png, "--device", "cpu")
    assert_one_line_error(r, str(png), "exists", "--force")
    assert png.read_bytes() == first
    r = run("sample", "synthfaces64", "-n", 4, "--seed", 1, "-o", png, "--device", "cpu",
            "--force")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert png.read_bytes() != first  # another seed, replaced


def test_edit_does_not_overwrite_a_file_in_the_output_folder_without_force(tmp_path):
    from PIL import Image

    from conceptvae.data.synth import render_face, sample_params

    face, _ = render_face(sample_params(0, 0, 1))
    photo = tmp_path / "me.png"
    Image.fromarray(face).save(photo)
    out = tmp_path / "out"
    out.mkdir()
    (out / "other.png").write_bytes(b"kept")  # a non-empty folder is fine: files are checked
    args = ["edit", "synthfaces64", photo, "--no-align", "-o", out, "--device", "cpu"]
    r = run(*args, "--edit", "Smiling+1")
    assert r.exit_code == 0, r.output
    smiling = (out / "me.png").read_bytes()
    r = run(*args, "--edit", "Smiling-1")
    assert_one_line_error(r, str(out / "me.png"), "exists", "--force")
    assert (out / "me.png").read_bytes() == smiling
    r = run(*args, "--edit", "Smiling-1", "--force")
    assert r.exit_code == 0, r.output
    assert (out / "me.png").read_bytes() != smiling
    assert (out / "other.png").read_bytes() == b"kept"


def test_train_takes_o_and_still_reads_the_old_out(tmp_path):
    r = run("train", tmp_path / "nothing")
    assert r.exit_code == 2 and "Missing option '-o' / '--output'" in r.output
    r = run("train", tmp_path / "nothing", "-o", tmp_path / "a", "--out", tmp_path / "b")
    assert r.exit_code == 2 and "--out is its old name" in r.output
    # --out is read as -o: the run folder is taken, the missing data reported
    r = run("train", tmp_path / "nothing", "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 1
    assert "--out is deprecated: use -o/--output" in r.stderr
    assert str(tmp_path / "nothing") in r.stderr.splitlines()[-1]

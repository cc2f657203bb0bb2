import os

import pytest

from conceptvae._fs import atomic_write_bytes, staged_dir
from conceptvae.errors import OutputError


def test_atomic_write_keeps_old_content_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "meta.json"
    atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]  # no temp file left


def test_staged_dir_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as stage:
        (stage / "a.txt").write_text("a")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "a"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staged_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), staged_dir(out) as stage:
        (stage / "half.txt").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_refuses_non_empty_folder_unless_forced(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(OutputError, match=r"out.*not empty.*--force"), staged_dir(out):
        pass
    assert (out / "precious.txt").read_text() == "keep me"

    # A failed forced run must not destroy the old content either.
    with pytest.raises(RuntimeError), staged_dir(out, force=True):
        raise RuntimeError("boom")
    assert (out / "precious.txt").read_text() == "keep me"

    with staged_dir(out, force=True) as stage:
        (stage / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    import os

    from conceptvae._fs import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "out.png", b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o644


def test_staged_dir_gives_the_usual_folder_mode(tmp_path):
    import os

    from conceptvae._fs import staged_dir

    old = os.umask(0o022)
    try:
        with staged_dir(tmp_path / "out") as stage:
            (stage / "a.txt").write_text("x")
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755

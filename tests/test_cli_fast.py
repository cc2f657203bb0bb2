"""The command line starts fast: what `--help` and `info` import, and the three entry points.

Each check runs a fresh interpreter (the test process itself has long imported torch) and reads
its ``sys.modules``; speed itself is measured in benchmarks/cli.py, not here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conceptvae.cli import cli

HEAVY = ("torch", "sklearn", "scipy", "cv2", "matplotlib")
COMMANDS = {
    "demo", "edit", "evaluate", "grid", "info", "interpolate", "prepare", "reconstruct",
    "sample", "synth", "train", "vectors",
}  # fmt: skip


def modules_after(code: str, cwd: Path) -> set[str]:
    """The modules a fresh interpreter holds after running ``code`` (which may exit)."""
    wrapper = (
        "import atexit, json, sys\n"
        "atexit.register(lambda: print('\\nMODULES ' + json.dumps(sorted(sys.modules))))\n" + code
    )
    r = subprocess.run(
        [sys.executable, "-c", wrapper], cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("MODULES "))
    return set(json.loads(line[len("MODULES ") :]))


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def test_help_of_the_cli_and_of_every_command_imports_no_heavy_library(tmp_path):
    names = sorted(cli.commands)
    code = (
        "from conceptvae.cli import main\n"
        f"for args in [['--help'], *[[n, '--help'] for n in {names!r}]]:\n"
        "    try:\n"
        "        main(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
    )
    mods = modules_after(code, tmp_path)
    assert "conceptvae.cli" in mods
    assert heavy(mods) == []
    assert "numpy" not in mods  # --help needs nothing but click


def test_importing_the_packages_loads_no_heavy_library_and_keeps_every_public_name(tmp_path):
    code = (
        "import attributes, conceptvae\n"
        "import sys\n"
        f"light = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "assert light == [], light\n"
        "for pkg in (attributes, conceptvae):\n"
        "    for name in pkg.__all__:\n"
        "        assert getattr(pkg, name) is not None, name\n"
        "from attributes import Report, quality_report\n"
        "from conceptvae import CELEBA_ATTRIBUTES, LabelledImages\n"
        "assert len(CELEBA_ATTRIBUTES) == 40\n"
    )
    mods = modules_after(code, tmp_path)
    # the lazy names resolved on first use
    assert "attributes.report" in mods


def test_info_imports_no_torch_opencv_or_sklearn(tmp_path):
    from conceptvae.data.synth import write_synthfaces

    write_synthfaces(tmp_path / "data", n=6, seed=0, workers=1, progress=False)
    code = (
        "from conceptvae.cli import main\n"
        "try:\n"
        f"    main(['info', {str(tmp_path / 'data')!r}])\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
    )
    mods = modules_after(code, tmp_path)
    assert "conceptvae.data.cache" in mods  # it did read the dataset
    assert heavy(mods) == []


def _command_names(help_text: str) -> set[str]:
    lines = help_text.split("Commands:", 1)[1].splitlines()
    return {line.split()[0] for line in lines if line.startswith("  ") and line.strip()}


@pytest.mark.parametrize(
    "entry",
    [
        pytest.param(["-m", "conceptvae"], id="python -m conceptvae"),
        pytest.param(["-m", "conceptvae.cli"], id="python -m conceptvae.cli"),
        pytest.param(None, id="conceptvae script"),
    ],
)
def test_every_entry_point_offers_every_command(entry, tmp_path):
    if entry is None:
        script = Path(sys.executable).parent / "conceptvae"
        if not script.is_file():
            pytest.skip("the conceptvae script is not installed beside this interpreter")
        cmd = [str(script), "--help"]
    else:
        cmd = [sys.executable, *entry, "--help"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("Usage: conceptvae ")
    names = _command_names(r.stdout)
    assert names == set(cli.commands)
    assert names >= COMMANDS

"""Command-line start-up: wall time of whole ``conceptvae`` commands against Python's own floors.

Each command runs as a user runs it, a fresh process of the installed ``conceptvae`` script,
and is timed from start to exit (median of several repeats, the commands taken in turn so a
change in the machine's load touches all of them alike). The floors are measured in the same
run the same way. Beside the wall time each row gives the CPU time (user + system) the process
used, which a busy machine inflates far less: on an idle machine the two are close for these
mostly single-threaded start-ups.

- ``python -c pass``: the interpreter alone;
- ``python -c "import torch"``: what any command that runs the model must pay;
- ``python -c "import torch, cv2"``: that plus OpenCV (face detection), for reading the edit row.

The commands:

- ``conceptvae --help`` and ``conceptvae info DATA`` (DATA: a small SynthFaces set made with
  ``conceptvae synth``): target <= 0.5 s each;
- ``conceptvae edit synthfaces64 PHOTO --edit Smiling -o OUT --force`` of one 1024 x 1024 JPEG
  (a SynthFaces face pasted at 3x into a noisy gradient): target within 1.5 s of the
  ``import torch`` floor.

    python benchmarks/cli.py [--repeats 7] [--n 200]

Prints a table and writes benchmarks/results/cli.json.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
# benchmarks/attributes.py would shadow the ``attributes`` package: import with this folder off
# the path, then put it back for ``common``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from conceptvae.data.synth import render_face, sample_params  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine, write_report  # noqa: E402

SIDE = 1024
HELP_TARGET_S = 0.5
EDIT_OVER_TORCH_TARGET_S = 1.5


def conceptvae_command() -> list[str]:
    """The installed console script beside this interpreter, else ``python -m conceptvae``."""
    script = Path(sys.executable).parent / "conceptvae"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "conceptvae"]


def make_photo(path: Path, seed: int = 0) -> Path:
    """A 1024 x 1024 JPEG: SynthFaces face 0 scaled 3x, pasted into a noisy gradient."""
    face, _ = render_face(sample_params(seed, 0, 1))  # (218, 178, 3) uint8
    big = Image.fromarray(face).resize((178 * 3, 218 * 3), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    bg = np.stack([40 + 160 * x / SIDE, 60 + 120 * y / SIDE, 130 + 0 * x], -1)
    bg = np.clip(bg + rng.normal(0, 10, bg.shape), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(bg)
    canvas.paste(big, ((SIDE - big.width) // 2, (SIDE - big.height) // 2))
    canvas.save(path, quality=95)
    return path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(wall seconds from start to exit, CPU seconds) of ``cmd``; a failure stops the benchmark."""
    cpu = _children_cpu()
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return elapsed, _children_cpu() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7, help="runs of each command (median)")
    ap.add_argument("--n", type=int, default=200, help="SynthFaces images for `info`")
    ap.add_argument("--out", default=str(HERE / "results/cli.json"), help="the JSON report")
    args = ap.parse_args()
    info = machine()
    cv = conceptvae_command()
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        tmp_path = Path(tmp)
        data = tmp_path / "synth"
        subprocess.run([*cv, "synth", str(data), "-n", str(args.n), "--workers", "1"],
                       check=True, capture_output=True)  # fmt: skip
        photo = make_photo(tmp_path / "photo.jpg")
        out = tmp_path / "out"
        out.mkdir()
        edit = [*cv, "edit", "synthfaces64", str(photo), "--edit", "Smiling", "-o", str(out),
                "--force", "--device", "cpu"]  # fmt: skip
        commands = {
            "python -c pass": [py, "-c", "pass"],
            'python -c "import torch"': [py, "-c", "import torch"],
            'python -c "import torch, cv2"': [py, "-c", "import torch, cv2"],
            "conceptvae --help": [*cv, "--help"],
            f"conceptvae info DATA ({args.n} SynthFaces)": [*cv, "info", str(data)],
            "conceptvae edit synthfaces64 PHOTO (1024 px) --edit Smiling -o OUT --force": edit,
        }
        for cmd in commands.values():  # warm the file cache (and the .pyc files) once
            timed_run(cmd, tmp_path)
        if not (out / "photo.jpg").is_file():
            raise SystemExit("the edit wrote no photo: the benchmark photo has no found face?")
        times: dict[str, list[float]] = {k: [] for k in commands}
        cpu: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeats):
            for name, cmd in commands.items():
                wall, used = timed_run(cmd, tmp_path)
                times[name].append(wall)
                cpu[name].append(used)
        shutil.rmtree(out, ignore_errors=True)
    load_end = list(os.getloadavg())

    med = {k: statistics.median(v) for k, v in times.items()}
    names = list(commands)
    floor_pass, floor_torch = med[names[0]], med[names[1]]
    targets = {
        names[3]: ("<= 0.5 s", med[names[3]] <= HELP_TARGET_S),
        names[4]: ("<= 0.5 s", med[names[4]] <= HELP_TARGET_S),
        names[5]: (
            "<= torch floor + 1.5 s",
            med[names[5]] - floor_torch <= EDIT_OVER_TORCH_TARGET_S,
        ),
    }
    rows = []
    for name in names:
        target, ok = targets.get(name, ("(floor)", None))
        rows.append(
            {
                "what": name,
                "median_s": round(med[name], 4),
                "min_s": round(min(times[name]), 4),
                "max_s": round(max(times[name]), 4),
                "over_python_s": round(med[name] - floor_pass, 4),
                "over_torch_s": round(med[name] - floor_torch, 4),
                "cpu_median_s": round(statistics.median(cpu[name]), 4),
                "target": target,
                "met": ok,
            }
        )
    print(f"\nCPU: {info['cpu']} ({info['cores_available']} cores available), load average "
          f"{info['load_average_at_start'][0]:.2f} at the start, {load_end[0]:.2f} at the end; "
          f"median of {args.repeats} runs\n")  # fmt: skip
    width = max(len(r["what"]) for r in rows)
    print(f"{'command':<{width}}  {'median s':>8}  {'min s':>6}  {'- python':>8}  {'- torch':>7}  "
          f"{'CPU s':>6}  target")  # fmt: skip
    for r in rows:
        met = "" if r["met"] is None else ("  met" if r["met"] else "  MISSED")
        print(f"{r['what']:<{width}}  {r['median_s']:>8.3f}  {r['min_s']:>6.3f}  "
              f"{r['over_python_s']:>8.3f}  {r['over_torch_s']:>7.3f}  {r['cpu_median_s']:>6.3f}  "
              f"{r['target']}{met}")  # fmt: skip
    write_report(
        args.out, "cli", info, repeats=args.repeats, synth_images=args.n, photo_side=SIDE,
        command=cv, load_average_at_end=load_end, rows=rows,
        times_s={k: [round(t, 4) for t in v] for k, v in times.items()},
        cpu_s={k: [round(t, 4) for t in v] for k, v in cpu.items()},
    )  # fmt: skip


if __name__ == "__main__":
    main()

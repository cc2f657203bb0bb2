"""Data pipeline speed: SynthFaces rendering, cache preparation, cache reading.

Every rate is measured against a reference in the same run and reported as a ratio (medians of
several repeats; this machine is shared and noisy):

1. SynthFaces render rate vs. the floor: JPEG-encoding and writing pre-made 178 x 218 arrays
   with the same number of worker processes.
2. ``prepare`` (178 x 218 JPEGs -> 64 px, centre crop 148, 2 workers) vs. a naive loader: PIL
   open, full decode, crop, LANCZOS resize, one process.
3. Reading a float training batch of 256 random images from the cache vs. decoding the same
   images from their JPEGs for every batch (the naive per-step loader).

    python benchmarks/data.py [--n 4000] [--quick]

Prints a table and writes benchmarks/results/data.json.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine, write_report
from PIL import Image

from conceptvae.data import LabelledImages
from conceptvae.data.cache import open_cache, prepare
from conceptvae.data.celeba import read_celeba

WORKERS = 2
SIZE, CROP = 64, 148
W, H = 178, 218
QUALITY = 90  # write_synthfaces' default, so the floor encodes the same way
_BANK: list[np.ndarray] = []  # pre-made arrays, inherited by the (forked) encoding workers


def _make_bank(k: int, seed: int = 0) -> list[np.ndarray]:
    """k face-sized arrays: smooth colour fields, a skin-coloured ellipse, mild noise.

    At JPEG quality 90 they average about 8-9 KB, like CelebA's aligned images.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    face = ((xx - 89) / 45) ** 2 + ((yy - 120) / 60) ** 2 < 1
    bank = []
    for _ in range(k):
        a = np.empty((H, W, 3), np.float32)
        for c in range(3):
            f = rng.uniform(0.01, 0.06, 4)
            a[..., c] = (
                128
                + 50 * np.sin(xx * f[0] + yy * f[1] + rng.uniform(0, 6))
                + 30 * np.cos(xx * f[2] - yy * f[3])
            )
        a[face] = a[face] * 0.3 + np.array([200, 160, 140], np.float32) * 0.7
        a += rng.normal(0, 4, a.shape).astype(np.float32)
        bank.append(np.clip(a, 0, 255).astype(np.uint8))
    return bank


def _encode_range(job: tuple[int, int, str]) -> int:
    start, stop, out = job
    for i in range(start, stop):
        Image.fromarray(_BANK[i % len(_BANK)]).save(
            os.path.join(out, f"{i + 1:06d}.jpg"), quality=QUALITY
        )
    return stop - start


def write_jpegs(out: Path, n: int, workers: int) -> float:
    """The floor: JPEG-encode and write n pre-made arrays with ``workers`` processes; seconds."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    step = max(1, n // (workers * 8))
    jobs = [(s, min(n, s + step), str(out)) for s in range(0, n, step)]
    t = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        assert sum(pool.imap_unordered(_encode_range, jobs)) == n
    return time.perf_counter() - t


def naive_load(path: str) -> np.ndarray:
    """The naive reference: full decode, crop 148, LANCZOS resize to 64, (3, 64, 64) uint8."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        left, top = (im.width - CROP) // 2, (im.height - CROP) // 2
        im = im.crop((left, top, left + CROP, top + CROP)).resize((SIZE, SIZE), Image.LANCZOS)
    return np.asarray(im).transpose(2, 0, 1)


def _median_rate(count: int, seconds: list[float]) -> float:
    return count / statistics.median(seconds)


def bench_synth(work: Path, n: int, repeats: int, floor_rate: float, floor_s: list[float]):
    try:
        from conceptvae.data.synth import write_synthfaces
    except ImportError as e:
        print(f"skipping SynthFaces: conceptvae.data.synth not importable ({e})", file=sys.stderr)
        return {"name": "synthfaces render", "skipped": str(e)}
    secs = []
    for _ in range(repeats):
        t = time.perf_counter()
        write_synthfaces(work / "synth", n, 0, workers=WORKERS, force=True, progress=False)
        secs.append(time.perf_counter() - t)
    rate = _median_rate(n, secs)
    return {
        "name": "synthfaces render",
        "what": f"write_synthfaces(n={n}, workers={WORKERS}), whole call incl. label files",
        "rate": rate,
        "seconds": secs,
        "reference": f"JPEG-encode + write pre-made {W}x{H} arrays, {WORKERS} workers (floor)",
        "reference_rate": floor_rate,
        "reference_seconds": floor_s,
        "ratio": rate / floor_rate,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=4000, help="images per measurement (default 4000)")
    ap.add_argument("--quick", action="store_true", help="fewer images and repeats (a smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats per measurement")
    ap.add_argument(
        "--out",
        default=str(Path(__file__).resolve().parent / "results" / "data.json"),
        help="where to write the JSON results",
    )
    args = ap.parse_args(argv)
    n = min(args.n, 800) if args.quick else args.n
    repeats = args.repeats or (2 if args.quick else 5)
    n_naive = min(n, 300 if args.quick else 1000)
    read_batches = 20 if args.quick else 100
    naive_batches = 2 if args.quick else 5
    info = machine()
    load = info["load_average_at_start"]
    print(f"machine: {info['cpu']}, {info['cores_available']} cores, load average {load}")
    print(f"n={n}, repeats={repeats}, workers={WORKERS}", flush=True)

    global _BANK
    _BANK = _make_bank(256)
    work = Path(tempfile.mkdtemp(prefix="conceptvae-bench-data-"))
    results = []
    try:
        # 1. The floor (and the JPEGs the later sections read), then SynthFaces against it.
        jpgs = work / "img"
        floor_s = [write_jpegs(jpgs, n, WORKERS) for _ in range(repeats)]
        floor_rate = _median_rate(n, floor_s)
        mean_kb = np.mean([p.stat().st_size for p in jpgs.iterdir()]) / 1024
        # Rendering is slow: fewer repeats there.
        results.append(bench_synth(work, n, min(repeats, 3), floor_rate, floor_s))

        # 2. prepare vs. the naive one-process loader, on the SynthFaces just written (the
        # embedded default dataset), or on the floor's JPEGs when the renderer is unavailable.
        if (work / "synth").is_dir():
            source = read_celeba(work / "synth")
            jpgs, names = source.image_dir, source.filenames
            mean_kb = np.mean([(jpgs / f).stat().st_size for f in names]) / 1024
            data_name = "SynthFaces"
        else:
            names = sorted(p.name for p in jpgs.iterdir())
            source = LabelledImages(
                root=work,
                layout="celeba-official",
                image_dir=jpgs,
                filenames=names,
                attr_names=["A"],
                labels=np.zeros((n, 1), np.uint8),
            )
            data_name = "synthetic"
        prep_s = []
        for _ in range(repeats):
            t = time.perf_counter()
            prepare(source, work / "cache", SIZE, crop=CROP, workers=WORKERS, force=True,
                    progress=False)  # fmt: skip
            prep_s.append(time.perf_counter() - t)
        naive_s = []
        for _ in range(repeats):
            t = time.perf_counter()
            for name in names[:n_naive]:
                naive_load(str(jpgs / name))
            naive_s.append(time.perf_counter() - t)
        prep_rate, naive_rate = _median_rate(n, prep_s), _median_rate(n_naive, naive_s)
        results.append(
            {
                "name": "prepare",
                "what": f"prepare(): {n} {data_name} {W}x{H} JPEGs (mean {mean_kb:.1f} KB, "
                f"quality {QUALITY}) -> {SIZE} px, crop {CROP}, workers={WORKERS}, whole call",
                "rate": prep_rate,
                "seconds": prep_s,
                "reference": f"naive: PIL open, full decode, crop, LANCZOS resize, 1 process "
                f"({n_naive} images)",
                "reference_rate": naive_rate,
                "reference_seconds": naive_s,
                "ratio": prep_rate / naive_rate,
            }
        )

        # 3. Reading training batches: the cache vs. decoding the JPEGs every step.
        cache = open_cache(work / "cache")
        rng = np.random.default_rng(0)
        cache.batch(rng.integers(0, n, 256))  # warm the page cache and the code path
        read_s = []
        for _ in range(read_batches):
            idx = rng.integers(0, n, 256)
            t = time.perf_counter()
            x = cache.batch(idx)
            read_s.append(time.perf_counter() - t)
        assert x.shape == (256, 3, SIZE, SIZE) and x.dtype == torch.float32
        naive_read_s = []
        for _ in range(naive_batches):
            idx = rng.integers(0, n, 256)
            t = time.perf_counter()
            rows = np.stack([naive_load(str(jpgs / names[i])) for i in idx])
            x = torch.from_numpy(rows).float().div_(255.0)
            naive_read_s.append(time.perf_counter() - t)
        read_rate, naive_read_rate = _median_rate(256, read_s), _median_rate(256, naive_read_s)
        results.append(
            {
                "name": "cache read",
                "what": "PreparedCache.batch(256 random indices) -> float32 (256, 3, 64, 64), "
                "memory-mapped",
                "rate": read_rate,
                "seconds": read_s,
                "reference": "naive per-step loader: decode + crop + resize the 256 JPEGs",
                "reference_rate": naive_read_rate,
                "reference_seconds": naive_read_s,
                "ratio": read_rate / naive_read_rate,
            }
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"{'measurement':<20} {'images/s':>10} {'reference images/s':>19} {'ratio':>8}")
    for r in results:
        if "skipped" in r:
            print(f"{r['name']:<20} skipped: {r['skipped']}")
            continue
        print(
            f"{r['name']:<20} {r['rate']:>10.0f} {r['reference_rate']:>19.0f} {r['ratio']:>7.2f}x"
        )
        print(f"{'':<20} vs. {r['reference']}")
    write_report(
        args.out,
        "data",
        info,
        settings={
            "n": n,
            "repeats": repeats,
            "workers": WORKERS,
            "quick": args.quick,
            "image_size": SIZE,
            "crop": CROP,
        },
        results=results,
    )
    return results


if __name__ == "__main__":
    main()

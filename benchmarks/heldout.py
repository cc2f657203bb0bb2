"""A held-out face set in an art style no model here was trained on, for checking edit claims.

Renders SynthFaces with another seed (other people, other images), then redraws every image in
an "ink" style: edge-preserving smoothing, colours posterised to a few levels, hues turned and
saturation raised, dark ink lines along the edges and a paper texture. The labels, partitions
and landmarks stay SynthFaces' own (the style moves no feature), so the set is a labelled face
set in CelebA's layout that every command reads::

    python benchmarks/heldout.py data/heldout --n 20000 --seed 7
    conceptvae prepare data/heldout data/heldout64
    conceptvae train data/heldout64 -o runs/heldout              # the defaults
    conceptvae vectors runs/heldout data/heldout64 --method balanced
    conceptvae evaluate runs/heldout data/heldout64 -o runs/heldout-report

Nothing in the project is tuned on this set: it only checks that what holds on SynthFaces
holds on faces and a style the model never saw.

``--restyle DIR`` restyles a copy of a rendered set instead (same faces, another style): a
*development* style to try a change on without the held-out set, measured on its valid split
only (``heldout_check.py --split valid``), since its test faces are the original set's::

    python benchmarks/heldout.py data/pastel_dev --restyle data/s20k --style pastel
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STYLES = ("ink", "pastel")


def restyle(rgb: np.ndarray, style: str, seed: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB redrawn in ``style``; deterministic for a given ``seed``."""
    rng = np.random.default_rng(seed)
    bgr = rgb[..., ::-1].copy()
    if style == "ink":
        smooth = cv2.bilateralFilter(bgr, 7, 40, 5)
        smooth = cv2.bilateralFilter(smooth, 7, 40, 5)
        hsv = cv2.cvtColor(smooth, cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + 5) % 180  # +10 degrees of hue
        hsv[..., 1] = np.clip(hsv[..., 1] * 1.15, 0, 255)
        out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
        levels = 8
        out = np.round(out / 255 * (levels - 1)) / (levels - 1) * 255
        edges = cv2.Canny(cv2.cvtColor(smooth, cv2.COLOR_BGR2GRAY), 50, 120)
        ink = cv2.GaussianBlur(edges.astype(np.float32) / 255, (0, 0), 0.7)
        out *= 1 - 0.7 * np.clip(ink, 0, 1)[..., None]
    elif style == "pastel":
        out = cv2.GaussianBlur(bgr, (0, 0), 1.2).astype(np.float32) / 255
        grey = out.mean(2, keepdims=True)
        out = 0.55 * out + 0.45 * grey  # desaturated
        out = 255 * (0.18 + 0.82 * out**0.7)  # lifted, flatter light
    else:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)}")
    paper = cv2.GaussianBlur(rng.standard_normal(out.shape[:2]).astype(np.float32), (0, 0), 1.5)
    out *= 1 + 0.05 * paper[..., None]
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)[..., ::-1]


def _restyle_files(args: tuple[list[str], str, int]) -> int:
    paths, style, quality = args
    cv2.setNumThreads(1)
    for p in paths:
        bgr = cv2.imread(p, cv2.IMREAD_COLOR)
        seed = int(Path(p).stem)
        out = restyle(bgr[..., ::-1], style, seed)[..., ::-1]
        cv2.imwrite(p, out, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return len(paths)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--style", choices=STYLES, default="ink")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--restyle", metavar="DIR", help="restyle a copy of this rendered set")
    args = ap.parse_args(argv)

    from tqdm.auto import tqdm

    from conceptvae.data.synth import write_synthfaces

    if args.restyle:
        import shutil

        shutil.copytree(args.restyle, args.out)
    else:
        write_synthfaces(args.out, n=args.n, seed=args.seed, workers=args.workers, quality=95)
    files = sorted(str(p) for p in (Path(args.out) / "img_align_celeba").glob("*.jpg"))
    chunks = [files[i : i + 250] for i in range(0, len(files), 250)]
    with ProcessPoolExecutor(args.workers) as pool, tqdm(total=len(files), desc=args.style) as bar:
        for done in pool.map(_restyle_files, [(c, args.style, 90) for c in chunks]):
            bar.update(done)
    readme = Path(args.out) / "README.md"
    text = readme.read_text(encoding="utf-8")
    readme.write_text(
        text
        + f"\n\nRestyled by benchmarks/heldout.py: style {args.style!r}, "
        + (f"from {args.restyle}.\n" if args.restyle else f"seed {args.seed}.\n"),
        encoding="utf-8",
    )
    where = f"from {args.restyle}" if args.restyle else f"seed {args.seed}"
    print(f"wrote {len(files)} {args.style} faces ({where}) to {args.out}")


if __name__ == "__main__":
    main()

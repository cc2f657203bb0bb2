"""Face detection: false faces on photos without one, true faces found, eye error, and speed.

Two versions of :func:`conceptvae.faces.detect_faces` are measured in the same run:

* **before**: ``conceptvae/faces.py`` as of commit 16f70b4 (read with ``git show``): every
  face box of the Haar cascades counts as a face; where the eye cascades find no pair of eyes
  in it, the eyes are placed at the box proportions;
* **after**: the working tree's: a face box counts only when a pair of eyes is found in it
  (see the docstring of ``detect_faces``).

1. False faces: the 22 photos bundled in the scikit-image wheel (no download) that have no
   human face to find (the cat ``chelsea``, ``coffee``, ``rocket``, textures, microscopy,
   text, ...), each at its own size and scaled so that its longer side is 1024 px. Every
   detection is a false face. ``camera`` (a man in profile behind a camera) is one of them,
   except that a detection on his head would not be counted (finding a profile face would be
   no error; neither version finds it).
2. True faces: ``astronaut`` (eyes checked against the pupils read off the photo), and
   SynthFaces pasted into larger photos (a noisy gradient or one of the non-face photos
   behind) over a grid of face widths (60 to 400 px), positions and rolls (-20 to +20
   degrees). A face is found when a detection has both eyes within 0.4 eye distances of the
   rendered truth; its eye error is the larger of the two, in pixels of the 178 x 218 aligned
   frame (photo pixels over the paste scale). Any other detection in these photos is a false
   face too.
3. Speed: ``detect_faces`` on a 1024 x 1024 photo with one face and on one without
   (``coffee`` scaled to 1024 px wide, where the roll retries run), median of several repeats
   taken in turns, as after over before (the machine is shared: ratios travel, milliseconds
   do not).

    python benchmarks/faces.py [--quick]

Prints a table and writes benchmarks/results/faces.json.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import skimage  # noqa: E402
import skimage.data as skd  # noqa: E402

from conceptvae import faces as F  # noqa: E402
from conceptvae.data.synth import render_face, sample_params  # noqa: E402

sys.path.insert(0, str(HERE))
from common import machine, write_report  # noqa: E402

BEFORE_COMMIT = "16f70b462249e23c18a0ea04a73c8e26d4babbfb"

# scikit-image's bundled photos without a human face (astronaut has one; lfw_subset is faces)
NON_FACE = (
    "brick", "camera", "cell", "chelsea", "checkerboard", "clock", "coffee", "coins",
    "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry",
    "logo", "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip
# where the cameraman's head is (x0, y0, x1, y1 in the 512 x 512 photo): not a false face
CAMERA_HEAD = (150, 60, 270, 215)
# the astronaut's pupils, read off the photo (0-based pixels of the 512 x 512)
ASTRONAUT_EYES = np.array([[201.5, 101.0], [246.5, 103.5]])

WIDTHS = (60, 90, 130, 190, 280, 400)  # face width in the photo, px
ROLLS = (-20.0, -10.0, 0.0, 10.0, 20.0)
PLACES = ((0.3, 0.35), (0.5, 0.5), (0.7, 0.6))  # face centre, fractions of the photo
FACE_WIDTH = 84.0  # a SynthFaces face's width at the cheeks in its own 178 x 218 frame
SEED = 11
W = 54  # label column


def rgb(a: np.ndarray) -> np.ndarray:
    """Any scikit-image sample as (H, W, 3) uint8 RGB."""
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = a.astype(np.float64)
        a = np.clip(255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-12), 0, 255)
        a = a.astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    return np.ascontiguousarray(a[..., :3])


def photo(name: str) -> np.ndarray:
    """scikit-image's bundled photo ``name`` as (H, W, 3) uint8 RGB."""
    return rgb(getattr(skd, name)())


def longest(a: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """``a`` scaled so that its longer side is ``side``, and the scale."""
    k = side / max(a.shape[:2])
    interp = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
    return cv2.resize(a, None, fx=k, fy=k, interpolation=interp), k


def _before() -> types.ModuleType:
    """``conceptvae/faces.py`` as of :data:`BEFORE_COMMIT`, imported as its own module."""
    src = subprocess.run(
        ["git", "-C", str(HERE.parent), "show", f"{BEFORE_COMMIT}:conceptvae/faces.py"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    mod = types.ModuleType("conceptvae_faces_before")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"faces.py@{BEFORE_COMMIT[:7]}", "exec"), mod.__dict__)
    return mod


DETECT = {"before": _before().detect_faces, "after": F.detect_faces}


# ---------------------------------------------------------------------------------------------
# the photos


def _background(h: int, w: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy gradient (k % 3 == 0) or a non-face photo cut and scaled to (h, w)."""
    if k % 3 == 0:
        y, x = np.mgrid[0:h, 0:w]
        g = np.stack([30 + 190 * x / w, 50 + 150 * y / h, 110 + 0 * x], -1)
        return np.clip(g + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    names = [n for n in NON_FACE if n != "camera"]
    src = photo(names[k % len(names)])
    s = max(h / src.shape[0], w / src.shape[1])
    big = cv2.resize(src, None, fx=s, fy=s, interpolation=cv2.INTER_CUBIC)
    y0, x0 = (big.shape[0] - h) // 2, (big.shape[1] - w) // 2
    return np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])


def synth_photo(k: int, width: float, roll: float, place: tuple[float, float]):
    """SynthFaces face ``k`` pasted at face width ``width`` px with its eye line rolled by
    ``roll`` degrees (clockwise on screen), centred at ``place`` of a 4:3 photo at least 1.7
    face frames high; returns the photo, the true eyes (2, 2) and the paste scale."""
    rng = np.random.default_rng(SEED + k)
    img, lm = render_face(sample_params(SEED, k, 1000))
    pts = np.asarray(lm, np.float64) - 1.0
    scale = width / FACE_WIDTH
    h = int(max(480, math.ceil(1.7 * 218 * scale)))
    w = int(round(h * 4 / 3))
    d = pts[1] - pts[0]
    a = math.radians(roll) - math.atan2(d[1], d[0])  # counter-clockwise in maths: clockwise
    A = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    centre = np.array([place[0] * w, place[1] * h])
    M = np.hstack([A, (centre - A @ pts[:3].mean(0))[:, None]])
    bg = _background(h, w, k, rng).astype(np.float32)
    face = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR).astype(np.float32)
    m = cv2.warpAffine(np.ones(img.shape[:2], np.float32), M, (w, h))[..., None]
    out = np.rint(bg * (1 - m) + face * m).astype(np.uint8)
    return out, pts[:2] @ M[:, :2].T + M[:, 2], scale


def _match(faces: list, eyes: np.ndarray) -> tuple[object | None, float | None, int]:
    """The detection whose eyes are nearest ``eyes`` (both within 0.4 eye distances), its
    eye error (the larger of the two, photo px) and the number of other detections."""
    tol = 0.4 * float(np.hypot(*(eyes[1] - eyes[0])))
    best, err = None, math.inf
    for f in faces:
        e = float(np.hypot(*(f.eyes - eyes).T).max())
        if e <= tol and e < err:
            best, err = f, e
    return best, (err if best is not None else None), len(faces) - (best is not None)


def _on_camera_head(box: tuple[int, int, int, int], k: float) -> bool:
    x0, y0, x1, y1 = (v * k for v in CAMERA_HEAD)
    cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
    return x0 <= cx <= x1 and y0 <= cy <= y1


# ---------------------------------------------------------------------------------------------
# the measurements


def false_faces(sides: tuple) -> dict:
    """Per version, per photo and size: the false faces found."""
    out: dict = {r: {} for r in DETECT}
    for name in NON_FACE:
        base = photo(name)
        for side in sides:
            img, k = (base, 1.0) if side is None else longest(base, side)
            key = f"{name}@{'own' if side is None else side}"
            line = f"  {key:<30}"
            for r, detect in DETECT.items():
                boxes = [f.box for f in detect(img)]
                if name == "camera":
                    boxes = [b for b in boxes if not _on_camera_head(b, k)]
                out[r][key] = {"size": list(img.shape[:2]), "false_faces": len(boxes),
                               "boxes": [list(b) for b in boxes]}  # fmt: skip
                line += f" {r} {len(boxes)}"
            print(line, flush=True)
    return out


def true_faces(widths, rolls, places) -> dict:
    """Per version: the astronaut and each pasted SynthFaces face, found or not."""
    out: dict = {r: {"synth": []} for r in DETECT}
    astro = photo("astronaut")
    for r, detect in DETECT.items():
        f, err, others = _match(detect(astro), ASTRONAUT_EYES)
        out[r]["astronaut"] = {"found": f is not None, "eye_error_px": err, "others": others}
    k = 0
    for width in widths:
        for roll in rolls:
            for place in places:
                img, eyes, scale = synth_photo(k, width, roll, place)
                for r, detect in DETECT.items():
                    f, err, others = _match(detect(img), eyes)
                    out[r]["synth"].append({
                        "face": k, "width": width, "roll": roll, "place": list(place),
                        "size": list(img.shape[:2]), "found": f is not None, "others": others,
                        "eye_error_frame_px": None if err is None else err / scale,
                        "eyes_found": None if f is None else bool(f.eyes_found),
                    })  # fmt: skip
                k += 1
        found = [sum(c["found"] for c in out[r]["synth"] if c["width"] == width) for r in DETECT]
        n = len(rolls) * len(places)
        print(f"  face width {width:>3} px: found " + ", ".join(
            f"{r} {m}/{n}" for r, m in zip(DETECT, found)), flush=True)  # fmt: skip
    return out


def _face_1024() -> np.ndarray:
    img, _, _ = synth_photo(999, 250.0, 4.0, (0.5, 0.5))
    img = longest(img, 1365)[0]  # 1365 x 1024, the face ~190 px wide
    return np.ascontiguousarray(img[:, 170:1194])


def speed(repeats: int) -> dict:
    """Median ms of each version on a 1024 x 1024 photo with a face, and on coffee."""
    photos = {"face": _face_1024(), "no face (coffee)": longest(photo("coffee"), 1024)[0]}
    out: dict = {}
    for what, img in photos.items():
        times: dict = {r: [] for r in DETECT}
        for detect in DETECT.values():
            detect(img)  # warm: cascades loaded
        for _ in range(repeats):
            for r, detect in DETECT.items():  # in turns, so that a busy moment hits both
                t = time.perf_counter()
                detect(img)
                times[r].append(time.perf_counter() - t)
        med = {r: 1000 * statistics.median(t) for r, t in times.items()}
        out[what] = {
            "size": list(img.shape[:2]),
            **{f"{r}_median_ms": m for r, m in med.items()},
            "ratio_after_over_before": med["after"] / med["before"],
            "seconds": times,
        }
    return out


def summarise(ff: dict, tf: dict) -> dict:
    s = {}
    for r in DETECT:
        photos = ff[r].values()
        per_photo = {n: sum(v["false_faces"] for k, v in ff[r].items() if k.split("@")[0] == n)
                     for n in NON_FACE}  # fmt: skip
        synth = tf[r]["synth"]
        found = [c for c in synth if c["found"]]
        errs = [c["eye_error_frame_px"] for c in found]
        n_true = len(synth) + 1
        n_found = len(found) + tf[r]["astronaut"]["found"]
        s[r] = {
            "non_face_photos": len(per_photo),
            "non_face_photos_with_a_false_face": sum(v > 0 for v in per_photo.values()),
            "false_faces_per_photo": per_photo,
            "non_face_images": len(photos),
            "images_with_a_false_face": sum(p["false_faces"] > 0 for p in photos),
            "false_face_rate": sum(p["false_faces"] > 0 for p in photos) / len(photos),
            "false_faces": sum(p["false_faces"] for p in photos),
            "faces": n_true,
            "faces_found": n_found,
            "true_detection_rate": n_found / n_true,
            "astronaut_found": tf[r]["astronaut"]["found"],
            "astronaut_eye_error_px": tf[r]["astronaut"]["eye_error_px"],
            "synth_faces": len(synth),
            "synth_found": len(found),
            "synth_found_with_eyes_placed_from_box": sum(not c["eyes_found"] for c in found),
            "eye_error_median": float(np.median(errs)) if errs else None,
            "eye_error_p95": float(np.percentile(errs, 95)) if errs else None,
            "eye_error_max": float(max(errs)) if errs else None,
            "false_faces_in_face_photos": sum(c["others"] for c in synth)
            + tf[r]["astronaut"]["others"],
            "missed": [[c["face"], c["width"], c["roll"], c["place"]]
                       for c in synth if not c["found"]],
        }  # fmt: skip
    return s


def _row(label: str, b, a, fmt: str = "") -> None:
    print(f"{label:<{W}} {format(b, fmt):>10} {format(a, fmt):>10}")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: fewer photos, 3 repeats")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default 10)")
    ap.add_argument("--out", default=str(HERE / "results/faces.json"))
    args = ap.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 10)
    sides = (None,) if args.quick else (None, 1024)
    widths, rolls, places = WIDTHS, ROLLS, PLACES
    if args.quick:
        widths, rolls, places = WIDTHS[::2], ROLLS[::2], PLACES[1:2]
    info = machine()
    info["scikit_image"] = skimage.__version__
    print(f"machine: {info['cpu']}, {info['cores_available']} cores, load average "
          f"{info['load_average_at_start']}, OpenCV {info['opencv']}")  # fmt: skip
    print("non-face photos, false faces found:", flush=True)
    ff = false_faces(sides)
    print("faces:", flush=True)
    tf = true_faces(widths, rolls, places)
    print("speed ...", flush=True)
    sp = speed(repeats)
    s = summarise(ff, tf)
    b, a = s["before"], s["after"]

    print()
    _row("measurement", "before", "after")
    n, m = b["non_face_photos"], b["non_face_images"]
    _row(f"non-face photos with a false face (of {n})", b["non_face_photos_with_a_false_face"],
         a["non_face_photos_with_a_false_face"])  # fmt: skip
    _row(f"  images with a false face (of {m}: {m // n} sizes each)",
         b["images_with_a_false_face"], a["images_with_a_false_face"])  # fmt: skip
    _row("  false-face rate (per image)", b["false_face_rate"], a["false_face_rate"], ".1%")
    _row("  false faces, all told", b["false_faces"], a["false_faces"])
    _row(f"faces found (of {b['faces']}: astronaut + SynthFaces)", b["faces_found"],
         a["faces_found"])  # fmt: skip
    _row("  true-detection rate", b["true_detection_rate"], a["true_detection_rate"], ".1%")
    _row("  eyes placed from the box, not found", b["synth_found_with_eyes_placed_from_box"],
         a["synth_found_with_eyes_placed_from_box"])  # fmt: skip
    for q in ("median", "p95", "max"):
        _row(f"  eye error {q} (px of the 178 x 218 frame)", b[f"eye_error_{q}"],
             a[f"eye_error_{q}"], ".2f")  # fmt: skip
    _row("  astronaut eye error (photo px)", b["astronaut_eye_error_px"],
         a["astronaut_eye_error_px"], ".2f")  # fmt: skip
    _row("false faces in the photos with faces", b["false_faces_in_face_photos"],
         a["false_faces_in_face_photos"])  # fmt: skip
    for what, t in sp.items():
        _row(f"detect_faces, 1024 px, {what}, ms", t["before_median_ms"], t["after_median_ms"],
             ".1f")  # fmt: skip
        print(f"{'':<{W}} after / before = {t['ratio_after_over_before']:.2f}")
    print(f"\nmissed [face, width, roll, place]:\n  before {b['missed']}\n  after  {a['missed']}")

    return write_report(
        args.out,
        "faces",
        info,
        settings={
            "quick": args.quick,
            "repeats": repeats,
            "before": f"conceptvae/faces.py at {BEFORE_COMMIT}",
            "after": "conceptvae/faces.py in the working tree",
            "non_face_photos": list(NON_FACE),
            "non_face_sizes": ["own" if x is None else x for x in sides],
            "widths": list(widths),
            "rolls": list(rolls),
            "places": [list(p) for p in places],
            "seed": SEED,
        },
        summary=s,
        false_faces=ff,
        true_faces=tf,
        speed=sp,
    )


if __name__ == "__main__":
    main()

"""Face detection, alignment into the model's training frame, and paste-back.

A photo goes in, one or more :class:`AlignedFace` crops come out, each in exactly the frame the
model was trained on (CelebA's aligned template, then the cache's centre crop and resize), and
an edited crop goes back into the photo under a feathered face mask.

Coordinates, everywhere in this module: points are ``(x, y)`` in **0-based pixel coordinates
with pixel centres at integers** (the top-left pixel covers ``[-0.5, 0.5]``), the convention of
``cv2.warpAffine`` and of the prepared cache's landmarks. An affine ``M`` is a (2, 3) float64
array acting on column vectors ``(x, y, 1)``. CelebA's own files are 1-based; the one place that
matters is :data:`~conceptvae.data.ALIGNED_TEMPLATE`, converted here once.

Detection is OpenCV's Haar cascades (bundled with opencv-python, nothing to download): two
frontal face detectors on a contrast-normalised grey image, then eye detectors in the upper
part of each face box; the pair of eyes gives the roll. A face box in which no plausible pair
of eyes is found is not a face (the face cascades alone fire on cats, coins and textures), so
every :class:`Face` :func:`detect_faces` returns has :attr:`Face.eyes_found` True. The mouth is
not detected: it is placed from the eyes with CelebA's template proportions (the mouth centre
lies about 1.107 eye distances below the eye mid-point, perpendicular to the eye line), which
is what the alignment needs. On SynthFaces pasted into photos (face widths 60 to 400 pixels,
roll up to 20 degrees) this finds about 98% of faces, with eyes a median of about 1.3 pixels
(of the 178 x 218 frame) from the truth, and no face in any of scikit-image's 22 bundled
photos without one; it misses faces whose eyes the eye cascades cannot see (dark glasses,
closed eyes, blur), and Haar cascades are weaker on real photos with strong pose, occlusion or
poor light, which is what ``--face`` and ``--no-align`` are for.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from conceptvae.data import ALIGNED_SIZE, Frame
from conceptvae.data import TEMPLATE_POINTS as _TEMPLATE
from conceptvae.data import apply_affine as _apply
from conceptvae.errors import DataError

__all__ = [
    "BOX_EYES",
    "AlignedFace",
    "Face",
    "Frame",
    "align_face",
    "alignment",
    "detect_faces",
    "face_mask",
    "find_faces",
    "invert_affine",
    "paste_back",
    "photo_mask",
    "similarity_transform",
    "warp_mask_to_photo",
    "warp_to_photo",
    "whole_image_face",
]


def _mouth_from_eyes_coefficients() -> tuple[float, float]:
    """The template's mouth in the eyes' own frame: mouth = mid + a * u + b * perp(u), with
    u = right eye - left eye and perp(u) = (-u_y, u_x) (pointing down the face)."""
    el, er, m = _TEMPLATE
    u = er - el
    v = np.array([-u[1], u[0]])
    d = m - (el + er) / 2
    n2 = float(u @ u)
    return float(d @ u) / n2, float(d @ v) / n2


_MOUTH_A, _MOUTH_B = _mouth_from_eyes_coefficients()  # about -0.0016 and 1.107

BOX_EYES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "frontalface_default": ((0.324, 0.407), (0.678, 0.407)),
    "frontalface_alt2": ((0.316, 0.399), (0.680, 0.399)),
}
"""Where the eyes fall in each face cascade's box, as fractions of the box (x of its width, y
of its height), measured on SynthFaces pasted into photos at random scale and roll; used to
choose among the eye detections (where a face box puts its eyes)."""

_FACE_CASCADES = ("frontalface_default", "frontalface_alt2")
_FACE_NEIGHBOURS = 5  # the face cascades' minNeighbors: a box is 6 or more merged detections
_WEAK_NEIGHBOURS = 3  # ... and as a last resort, upright and with a strict eye pair, 4 or 5

# The eye cascades' box centres sit a little above (their boxes take in the brow) and left of
# the eye centre: the median offset on SynthFaces, in face-box widths, added back.
_EYE_BIAS = (0.007, 0.010)
_EYE_ROI_WIDTH = 160
_EYE_SAME = 0.06  # eye detections this close (in face-box widths) are the same eye


# ---------------------------------------------------------------------------------------------
# the training frame


# ---------------------------------------------------------------------------------------------
# affine helpers


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection or
    shear) taking ``src`` (N, 2) to ``dst`` (N, 2), N >= 2, as a (2, 3) affine.

    Closed form: with centred points, ``a = sum(s . d) / sum|s|^2``, ``b = sum(s x d) /
    sum|s|^2`` and ``M = [[a, -b, tx], [b, a, ty]]``; exact whenever ``dst`` is a similar copy
    of ``src``.
    """
    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) != len(dst) or len(src) < 2:
        raise ValueError(f"need two matching sets of >= 2 points, got {src.shape} and {dst.shape}")
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    n2 = float((s * s).sum())
    if n2 <= 1e-12:
        raise ValueError("the source points coincide: no transform is defined")
    a = float((s * d).sum()) / n2
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / n2
    A = np.array([[a, -b], [b, a]])
    return np.hstack([A, (md - A @ ms)[:, None]])


def alignment(points_src: np.ndarray, frame: Frame) -> np.ndarray:
    """(2, 3) photo -> crop affine: the least-squares similarity taking a face's left eye,
    right eye and mouth centre ``points_src`` (3, 2), 0-based photo pixels, to ``frame``'s
    template points (:meth:`Frame.points`)."""
    return similarity_transform(points_src, frame.points())


def invert_affine(M: np.ndarray) -> np.ndarray:
    """The inverse (2, 3) affine of ``M`` (2, 3): ``invert_affine(M)`` undoes ``M``."""
    M = np.asarray(M, np.float64)
    A_inv = np.linalg.inv(M[:, :2])
    return np.hstack([A_inv, (-A_inv @ M[:, 2])[:, None]])


def _scale(M: np.ndarray) -> float:
    """The linear scale of a similarity (geometric mean for a general affine)."""
    return math.sqrt(abs(float(np.linalg.det(M[:, :2]))))


def _resize_target(M: np.ndarray, k: float) -> np.ndarray:
    """``M`` followed by a resize of its output by ``k`` (pixel centres kept):
    ``U = k * (u + 0.5) - 0.5``."""
    out = M * k
    out[:, 2] += 0.5 * k - 0.5
    return out


# ---------------------------------------------------------------------------------------------
# detection


@dataclass
class Face:
    """One face found in a photo.

    Attributes:
        box: ``(x, y, w, h)`` of the detector's face box, integer photo pixels (for a face
            found on the photo turned by a few degrees, the box of that size around its
            centre).
        eyes: (2, 2) float64 eye centres, 0-based photo pixels; row 0 is the left eye as seen in
            the image (smaller x), row 1 the right one.
        mouth: (2,) float64 mouth centre, 0-based photo pixels (placed from the eyes).
        score: the detector's confidence (the number of merged detections; higher is surer).
        eyes_found: True when the eye detector found both eyes (always, for the faces
            :func:`detect_faces` returns); False when they were placed by other means (the
            template, for :func:`whole_image_face`), so that no roll is known.
    """

    box: tuple[int, int, int, int]
    eyes: np.ndarray
    mouth: np.ndarray
    score: float = 0.0
    eyes_found: bool = False

    def points(self) -> np.ndarray:
        """(3, 2) float64: left eye, right eye, mouth centre (0-based photo pixels)."""
        return np.vstack([self.eyes, self.mouth[None]]).astype(np.float64)

    @property
    def roll(self) -> float:
        """The face's in-plane rotation in degrees (positive: clockwise on screen)."""
        d = self.eyes[1] - self.eyes[0]
        return math.degrees(math.atan2(d[1], d[0]))


_LOCAL = threading.local()


def _cascade(name: str) -> cv2.CascadeClassifier:
    """The bundled Haar cascade ``name``, loaded once per thread (a classifier is not meant
    to be shared by threads detecting at the same time)."""
    cache = _LOCAL.__dict__.setdefault("cascades", {})
    if name not in cache:
        path = os.path.join(cv2.data.haarcascades, f"haarcascade_{name}.xml")
        c = cv2.CascadeClassifier(path)
        if c.empty():  # pragma: no cover - a broken OpenCV install
            raise RuntimeError(f"OpenCV's Haar cascade {path} could not be loaded")
        cache[name] = c
    return cache[name]


def _check_image(image: Any, what: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 numpy array (H, W, 3) RGB, got {_desc(image)}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"{what} must be (H, W, 3) RGB, got shape {image.shape}")
    return image


def _desc(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array {x.shape}"
    return type(x).__name__


def _mouth_from_eyes(eyes: np.ndarray) -> np.ndarray:
    el, er = eyes
    u = er - el
    v = np.array([-u[1], u[0]])
    return (el + er) / 2 + _MOUTH_A * u + _MOUTH_B * v


def _box_eyes(box: tuple[int, int, int, int], cascade: str) -> np.ndarray:
    x, y, w, h = box
    return np.array([[x + fx * w, y + fy * h] for fx, fy in BOX_EYES[cascade]], np.float64)


_EYE_CASCADES = ("eye", "eye_tree_eyeglasses")


def _eye_detections(
    grey: np.ndarray, box: tuple[int, int, int, int], neighbours: int
) -> tuple[np.ndarray, np.ndarray]:
    """The eye cascades' detections in the upper part of ``box``: (N, 2) centres in photo
    pixels and (N,) the index of the eye cascade that made each. ``neighbours`` is the
    cascades' ``minNeighbors``: 3 for the strict search, 1 for the relaxed one."""
    x, y, w, h = box
    H, W = grey.shape
    x0, x1 = max(x, 0), min(x + w, W)
    y0, y1 = max(y, 0), min(y + int(round(0.6 * h)), H)
    if x1 - x0 < 16 or y1 - y0 < 16:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    roi = grey[y0:y1, x0:x1]
    # eyes are searched in a box _EYE_ROI_WIDTH pixels wide (eyes ~35 px, above the eye
    # cascades' 20 px window): shrunk, as sure as at full size and fast on large faces;
    # enlarged, the eyes of small faces (under 20 px in a face box under ~90 px) are found
    g = _EYE_ROI_WIDTH / w
    size = (max(1, round(roi.shape[1] * g)), max(1, round(roi.shape[0] * g)))
    gx, gy = size[0] / roi.shape[1], size[1] / roi.shape[0]
    if size != roi.shape[::-1]:
        interp = cv2.INTER_AREA if g < 1.0 else cv2.INTER_LINEAR
        roi = cv2.resize(roi, size, interpolation=interp)
    roi = cv2.equalizeHist(np.ascontiguousarray(roi))
    lo, hi = max(8, int(0.1 * w * g)), max(9, int(0.45 * w * g))
    cands, which = [], []
    for k, name in enumerate(_EYE_CASCADES):
        found = _cascade(name).detectMultiScale(
            roi, scaleFactor=1.1, minNeighbors=neighbours, minSize=(lo, lo), maxSize=(hi, hi)
        )
        for ex, ey, ew, eh in np.reshape(found, (-1, 4)).tolist():
            cx, cy = (ex + ew / 2.0) / gx - 0.5, (ey + eh / 2.0) / gy - 0.5  # pixel centres
            cands.append((x0 + cx + _EYE_BIAS[0] * w, y0 + cy + _EYE_BIAS[1] * w))
            which.append(k)
    return np.array(cands, np.float64).reshape(-1, 2), np.array(which, np.int64)


def _eye_pair(
    c: np.ndarray, box: tuple[int, int, int, int], cascade: str, widest: float
) -> np.ndarray | None:
    """The most plausible left/right pair among eye detections ``c`` (N, 2) for the face box
    ``box`` of ``cascade``, as (2, 2) photo pixels (left eye first), or None: the eyes must
    be on either side of the box's middle, 0.29 to ``widest`` box widths apart, tilted under
    about 19 degrees, each within 0.15 box widths of where the box puts it
    (:data:`BOX_EYES`)."""
    if len(c) < 2:
        return None
    x, y, w, h = box
    prior = _box_eyes(box, cascade)
    mid = x + w / 2.0
    best, best_cost = None, math.inf
    for i in range(len(c)):
        for j in range(len(c)):
            a, b = c[i], c[j]
            if not (a[0] < mid < b[0]):
                continue
            d = b - a
            dist = math.hypot(*d)
            if not 0.29 * w <= dist <= widest * w or abs(d[1]) > 0.35 * abs(d[0]):
                continue
            ea, eb = np.hypot(*(a - prior[0])), np.hypot(*(b - prior[1]))
            if max(ea, eb) > 0.15 * w:
                continue
            cost = ea + eb
            if cost < best_cost:
                best, best_cost = (a, b), cost
    if best is None:
        return None
    # each eye: the mean of the detections that agree with the chosen one (the two cascades
    # often both fire on the same eye, and their mean is steadier than either)
    out = []
    for e in best:
        near = c[np.hypot(*(c - e).T) <= _EYE_SAME * w]
        out.append(near.mean(0))
    return np.array(out)


def _find_eyes(
    grey: np.ndarray,
    box: tuple[int, int, int, int],
    cascade: str,
    *,
    other_cascade_agrees: bool = False,
    relaxed: bool = True,
) -> tuple[np.ndarray | None, bool]:
    """The eyes of the face box ``box``: ((2, 2) photo pixels, left eye first, or None, and
    whether they came from the relaxed search, which is made only if ``relaxed``).

    Strict: a pair (:func:`_eye_pair`) among the eye cascades' detections at 3 neighbours, up
    to 0.50 box widths apart (real faces' eyes can sit wider in the box than SynthFaces').
    Relaxed, when that finds none: a pair among the detections at 1 neighbour, up to 0.42 box
    widths apart, accepted only when the other face cascade found the box too
    (``other_cascade_agrees``) or one of the two eyes is sure (both eye cascades found it in
    the strict search). On the non-face photos of ``benchmarks/faces.py``, also scaled,
    mirrored and turned (211 face boxes), no box got a strict pair, and relaxed pairs only
    where neither condition held, but for one box of ``coins`` found by both face cascades
    whose relaxed pair is 0.44 box widths apart: hence 0.42 for the relaxed search.
    """
    strict, which = _eye_detections(grey, box, 3)
    eyes = _eye_pair(strict, box, cascade, 0.50)
    if eyes is not None:
        return eyes, False
    w = box[2]
    sure = [
        e
        for e in strict[which == 0]
        if (np.hypot(*(strict[which == 1] - e).T) <= _EYE_SAME * w).any()
    ]
    if not relaxed or not (other_cascade_agrees or sure):
        return None, False
    loose, _ = _eye_detections(grey, box, 1)
    eyes = _eye_pair(loose, box, cascade, 0.42)
    if eyes is None:
        return None, False
    if other_cascade_agrees:
        return eyes, True
    near_sure = [min(np.hypot(*(e - np.array(sure)).T)) <= _EYE_SAME * w for e in eyes]
    return (eyes, True) if any(near_sure) else (None, False)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    ih = min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    return iw * ih / min(a[2] * a[3], b[2] * b[3])


def _normalise(grey: np.ndarray) -> np.ndarray:
    """Local contrast for the face cascades: CLAHE rather than one histogram equalisation of
    the whole photo, which leaves dark-skinned faces on a bright background too flat (on
    SynthFaces, 4 of 9 darker faces found with equalisation, 8 of 9 with CLAHE)."""
    return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)


_RETRY_ROLLS = (-12.0, 12.0)  # degrees; the frontal cascades miss faces rolled much past 10


_Box = tuple[int, str, tuple[int, int, int, int], float]  # (rank, cascade, box, neighbours)


def _face_boxes(
    grey: np.ndarray, min_size: int, roll: float, min_neighbours: int
) -> tuple[np.ndarray, np.ndarray | None, list[_Box]]:
    """The face cascades' boxes in ``grey`` turned by ``roll`` degrees (about its centre, on a
    canvas that holds all of it): the searched image, the affine from it back to ``grey``'s
    pixels (None when not turned), and the boxes in the searched image's pixels, each with
    its cascade's rank and name and its number of merged detections (more than
    ``min_neighbours``)."""
    R = None
    if roll:
        H, W = grey.shape
        R = cv2.getRotationMatrix2D(((W - 1) / 2, (H - 1) / 2), roll, 1.0)
        c, s = abs(R[0, 0]), abs(R[0, 1])
        Wr, Hr = int(math.ceil(W * c + H * s)), int(math.ceil(W * s + H * c))
        R[:, 2] += ((Wr - 1) / 2 - (W - 1) / 2, (Hr - 1) / 2 - (H - 1) / 2)
        grey = cv2.warpAffine(grey, R, (Wr, Hr), flags=cv2.INTER_LINEAR, borderValue=0)
    back = None if R is None else invert_affine(R)
    f = min(1.0, 24.0 / min_size)
    small = grey
    if f < 1.0:
        small = cv2.resize(grey, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    small = _normalise(small)
    ms = max(1, int(round(min_size * f)))
    boxes: list[_Box] = []
    if min(small.shape) < ms:
        return grey, back, boxes
    for rank, name in enumerate(_FACE_CASCADES):
        found, neighbours = _cascade(name).detectMultiScale2(
            small, scaleFactor=1.1, minNeighbors=min_neighbours, minSize=(ms, ms)
        )
        for xywh, score in zip(
            np.reshape(found, (-1, 4)).tolist(), np.reshape(neighbours, -1).tolist()
        ):
            boxes.append((rank, name, tuple(int(round(v / f)) for v in xywh), float(score)))
    return grey, back, boxes


def _faces_in(
    grey: np.ndarray,
    back: np.ndarray | None,
    boxes: list[_Box],
    roll: float,
    *,
    relaxed: bool = True,
) -> list[tuple[tuple, Face]]:
    """The boxes (from :func:`_face_boxes` on ``grey``) with a pair of eyes
    (:func:`_find_eyes`; strict pairs only unless ``relaxed``), mapped back to the photo's
    pixels by ``back``, each with a ranking key (relaxed pair, turned, cascade rank, -score;
    smaller wins). A box that overlaps one already kept is that face again and is skipped;
    strict pairs are kept first, so that a relaxed pair never stands in for a strict one."""
    kept: list[tuple[tuple, tuple, np.ndarray]] = []  # (key, box, eyes) in the searched image
    searched: dict[int, tuple[np.ndarray | None, bool]] = {}
    for loose_pass in (False, True):
        for i, (rank, name, box, score) in enumerate(boxes):
            if any(_overlap(box, k[1]) >= 0.5 for k in kept):
                continue
            if i not in searched:
                agrees = any(r != rank and _overlap(box, b) >= 0.5 for r, _, b, _ in boxes)
                searched[i] = _find_eyes(
                    grey, box, name, other_cascade_agrees=agrees, relaxed=relaxed
                )
            eyes, loose = searched[i]
            if eyes is not None and loose == loose_pass:
                kept.append(((loose, roll != 0, rank, -score), box, eyes))
    out: list[tuple[tuple, Face]] = []
    for key, box, eyes in kept:
        if back is not None:
            eyes = _apply(back, eyes)
            cx, cy = _apply(back, np.array([[box[0] + box[2] / 2, box[1] + box[3] / 2]]))[0]
            box = (int(round(cx - box[2] / 2)), int(round(cy - box[3] / 2)), box[2], box[3])
        out.append((key, Face(box, eyes, _mouth_from_eyes(eyes), -key[3], True)))
    return out


def detect_faces(image: np.ndarray, *, min_size: int | None = None) -> list[Face]:
    """Find the faces in ``image`` (H, W, 3) uint8 RGB; largest box first.

    Haar cascades ``frontalface_default`` and ``frontalface_alt2`` on the CLAHE-normalised
    grey image (scale step 1.1, ``minNeighbors`` 5, smallest face ``min_size`` pixels, by default
    max(24, 5% of the shorter side); the image is first shrunk so that ``min_size`` becomes
    24 pixels, the cascades' own window, which makes large photos fast at no loss). For each
    box the eyes come from the eye cascades in its upper 60% (scaled to 160 pixels wide): the
    best left/right pair of plausible size and tilt near where the box says they are (which
    also gives the roll).

    **A box counts as a face only when a pair of eyes is found in it**, so that a photo
    without a face gives no face: the face cascades alone fire on cats, coins, textures and
    cells (see "Which photos count as faces" in docs/editing.md). Where the strict eye search
    (3 neighbours) finds no pair, a relaxed one (1 neighbour) is made in a box that both face
    cascades found, or in which one eye is sure (both eye cascades found it); a box with no
    pair after that is dropped. Faces whose eyes the eye cascades cannot see (dark glasses,
    eyes shut by a smile, a blurred face) are therefore missed.
    When no face has a strict pair, the search is repeated on the image turned by -12 and +12
    degrees (the frontal cascades miss faces rolled past about 10 degrees). When there is
    still no face, the upright boxes the face cascades are less sure of (``minNeighbors`` 3)
    are taken, each only with a strict eye pair. Boxes that overlap are one face: a strict
    eye pair wins over a relaxed one, then an upright search over a turned one,
    ``frontalface_default`` over ``alt2``, the higher score. The mouth is placed from the
    eyes with the template's proportions.
    """
    _check_image(image)
    H, W = image.shape[:2]
    if min_size is None:
        min_size = max(24, int(round(0.05 * min(H, W))))
    elif isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 1:
        raise ValueError(f"min_size must be a positive number of pixels, got {min_size!r}")
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    # one upright search keeps the boxes of 4 or more merged detections: those of 6 or more
    # (minNeighbors 5) are the face cascades' answer, the others a last resort
    upright, _, boxes = _face_boxes(grey, int(min_size), 0.0, _WEAK_NEIGHBOURS)
    strong = [b for b in boxes if b[3] > _FACE_NEIGHBOURS]
    candidates = _faces_in(upright, None, strong, 0.0)
    if not any(not key[0] for key, _ in candidates):  # no strict eye pair: try turned
        for roll in _RETRY_ROLLS:
            turned, back, turned_boxes = _face_boxes(grey, int(min_size), roll, _FACE_NEIGHBOURS)
            candidates += _faces_in(turned, back, turned_boxes, roll)
    if not candidates:
        weak = [b for b in boxes if b[3] <= _FACE_NEIGHBOURS]
        candidates = _faces_in(upright, None, weak, 0.0, relaxed=False)
    candidates.sort(key=lambda c: c[0])
    faces: list[Face] = []
    for _, face in candidates:
        if all(_overlap(face.box, kept.box) < 0.5 for kept in faces):
            faces.append(face)
    faces.sort(key=lambda f: (-f.box[2] * f.box[3], f.box[0], f.box[1]))
    return faces


def find_faces(
    image: np.ndarray, which: int | str = 0, *, source: str | os.PathLike | None = None
) -> list[Face]:
    """The faces ``which`` selects (the CLI's ``--face N|all``): a 0-based index into
    :func:`detect_faces`' largest-first list (returned as a one-element list), or ``"all"``.

    Raises :class:`~conceptvae.errors.DataError` when there is no face, naming ``source`` (the
    photo's path) and ``--no-align``, or when the index is past the faces found.
    """
    if isinstance(which, str) and which.strip().isdigit():
        which = int(which.strip())
    if not (
        which == "all" or (isinstance(which, (int, np.integer)) and not isinstance(which, bool))
    ):
        raise DataError(f"--face must be a face number (0 = largest) or 'all', got {which!r}")
    where = str(source) if source is not None else "the image"
    faces = detect_faces(image)
    if not faces:
        raise DataError(
            f"no face found in {where}: pass --no-align to treat the whole image as an aligned face"
        )
    if which == "all":
        return faces
    n = len(faces)
    if not 0 <= which < n:
        raise DataError(
            f"--face {which} is out of range: {n} face{'s' if n != 1 else ''} found in {where}; "
            f"pass 0 to {n - 1} (0 is the largest) or --face all"
        )
    return [faces[int(which)]]


# ---------------------------------------------------------------------------------------------
# alignment


@dataclass
class AlignedFace:
    """A face cut out of a photo into the model's frame.

    Attributes:
        crop: (S, S, 3) uint8 RGB, S = ``frame.image_size``.
        matrix: (2, 3) photo -> crop affine (0-based pixels both sides).
        inverse: (2, 3) crop -> photo affine.
        face: the detection it came from (for ``--no-align``, the template placed in the photo).
        frame: the frame the crop is in.
    """

    crop: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    face: Face
    frame: Frame


_MAX_OVERSAMPLED = 1024  # largest side of the intermediate warp when shrinking


def _warp_to_crop(image: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """Resample ``image`` through ``M`` (photo -> crop) into a (size, size, 3) crop.

    ``cv2.warpAffine`` has no area filter, so when ``M`` shrinks by more than 1, the warp goes
    into an intermediate k times larger (k = ceil(1 / scale), at most 1024 pixels a side) with
    bilinear sampling, and ``cv2.resize(INTER_AREA)`` then averages each k x k block: an area
    resample like the cache's. A pure crop-and-resize on whole pixels (``--no-align`` on an
    aligned image) is done as exactly that, to give the cache's very pixels.
    """
    inv = invert_affine(M)
    A = M[:, :2]
    if abs(A[0, 1]) < 1e-12 and abs(A[1, 0]) < 1e-12 and abs(A[0, 0] - A[1, 1]) < 1e-12:
        side = size / A[0, 0]
        x0, y0 = _apply(inv, np.array([[-0.5, -0.5]]))[0] + 0.5
        whole = [round(v) for v in (side, x0, y0)]
        H, W = image.shape[:2]
        if (
            all(abs(v - r) < 1e-6 for v, r in zip((side, x0, y0), whole))
            and whole[0] >= size
            and whole[1] >= 0
            and whole[2] >= 0
            and whole[1] + whole[0] <= W
            and whole[2] + whole[0] <= H
        ):
            c, x0i, y0i = whole
            cut = image[y0i : y0i + c, x0i : x0i + c]
            if c == size:
                return np.ascontiguousarray(cut)
            return cv2.resize(cut, (size, size), interpolation=cv2.INTER_AREA)
    s = _scale(M)
    k = 1
    if s < 1:
        k = max(1, min(math.ceil(1.0 / s - 1e-9), _MAX_OVERSAMPLED // size))
    Mk = _resize_target(M, k)
    big = cv2.warpAffine(
        image, Mk, (size * k, size * k), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    if k == 1:
        return big
    return cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)


def align_face(image: np.ndarray, face: Face, frame: Frame) -> AlignedFace:
    """Cut ``face`` out of ``image`` (H, W, 3) uint8 RGB into ``frame``: the similarity that
    puts its eyes and mouth on the template (:func:`alignment`), resampled with area averaging
    when shrinking; outside the photo the image is mirrored (``BORDER_REFLECT_101``)."""
    _check_image(image)
    M = alignment(face.points(), frame)
    crop = _warp_to_crop(image, M, frame.image_size)
    return AlignedFace(crop, M, invert_affine(M), face, frame)


def whole_image_face(image: np.ndarray, frame: Frame) -> AlignedFace:
    """``--no-align``: take ``image`` (H, W, 3) uint8 RGB as already aligned.

    An image with CelebA's aspect (178 : 218, within 2%) is taken as the whole aligned frame,
    scaled: the frame's centred crop is cut from it exactly as ``prepare`` cuts it. Any other
    image is taken as the crop itself: its centred square, area-resized to the frame's size.
    The matrix and inverse relate photo and crop pixels as for a detected face, so
    :func:`paste_back` works the same; ``face`` holds the template placed in the photo.
    """
    _check_image(image)
    H, W = image.shape[:2]
    S = frame.image_size
    aw, ah = ALIGNED_SIZE
    if abs((W / H) / (aw / ah) - 1.0) <= 0.02:
        # photo pixels -> aligned 178 x 218 pixels: one scale, centre on centre (for an exact
        # aspect this is x' = (x + 0.5) * 178 / W - 0.5, the same in y)
        s = 0.5 * (aw / W + ah / H)
        to_aligned = np.array(
            [[s, 0.0, (aw - 1) / 2 - s * (W - 1) / 2], [0.0, s, (ah - 1) / 2 - s * (H - 1) / 2]]
        )
        M = _compose(frame.aligned_matrix(), to_aligned)
    else:
        c = min(W, H)
        left, top = (W - c) // 2, (H - c) // 2
        s = S / c
        M = np.array([[s, 0.0, (0.5 - left) * s - 0.5], [0.0, s, (0.5 - top) * s - 0.5]])
    inverse = invert_affine(M)
    pts = _apply(inverse, frame.points())
    face = Face((0, 0, W, H), pts[:2].copy(), pts[2].copy(), 0.0, False)
    crop = _warp_to_crop(image, M, S)
    return AlignedFace(crop, M, inverse, face, frame)


def _compose(M2: np.ndarray, M1: np.ndarray) -> np.ndarray:
    """The affine applying ``M1`` first, then ``M2``."""
    A = M2[:, :2] @ M1[:, :2]
    return np.hstack([A, (M2[:, :2] @ M1[:, 2] + M2[:, 2])[:, None]])


# ---------------------------------------------------------------------------------------------
# paste-back

# The face region of the template, in 0-based pixels of the aligned 178 x 218 image: an
# ellipse from the brows' top to below the chin and cheek to cheek (SynthFaces' face outline,
# with a little margin).
_MASK_CENTRE = (88.5, 132.0)
_MASK_AXES = (50.0, 60.0)


def face_mask(size: int, frame: Frame, feather: float = 0.08) -> np.ndarray:
    """(size, size) float32 in [0, 1]: the face region of ``frame``'s template in crop
    pixels, an ellipse that is 1 inside, falls smoothly (smoothstep) to 0 over ``feather`` x
    ``size`` pixels inside its edge, and is exactly 0 on and outside the edge.

    ``size`` may differ from ``frame.image_size`` (a decoder's larger output): the ellipse is
    scaled with the crop. Where the ellipse runs past the crop (the chin, in a 148 crop) the
    mask fades the same way to exactly 0 on the crop's outermost pixels, so the crop's edge
    never shows in the photo.
    """
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if not 0 <= feather <= 1:
        raise ValueError(f"feather must be a fraction of the crop in [0, 1], got {feather!r}")
    M = _resize_target(frame.aligned_matrix(), size / frame.image_size)
    cx, cy = _apply(M, np.array([_MASK_CENTRE]))[0]
    ax, ay = _MASK_AXES[0] * M[0, 0], _MASK_AXES[1] * M[1, 1]
    width = max(feather * size, 1e-6)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    r = np.sqrt(((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2)
    # inside the ellipse: distance in from its edge (along the mean radius), and in from the
    # crop's outermost pixel centres, where the crop ends (the chin runs past a 148 crop)
    inner = (1.0 - r) * math.sqrt(ax * ay)
    edge = np.minimum(np.minimum(xx, yy), np.minimum(size - 1 - xx, size - 1 - yy))
    t = np.clip(np.minimum(inner, edge) / width, 0.0, 1.0)
    m = t * t * (3.0 - 2.0 * t)
    m[(r >= 1.0) | (edge <= 0)] = 0.0
    return m.astype(np.float32)


def _crop_to_photo(aligned: AlignedFace, crop_size: int) -> np.ndarray:
    """photo -> crop affine for a crop of ``crop_size`` pixels (the aligned crop resized)."""
    return _resize_target(aligned.matrix, crop_size / aligned.frame.image_size)


def _check_shape(photo_shape: Any) -> tuple[int, int]:
    shape = tuple(int(v) for v in tuple(photo_shape)[:2])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"photo_shape must start with (H, W), got {photo_shape!r}")
    return shape


def warp_to_photo(
    crop: np.ndarray, aligned: AlignedFace, photo_shape: tuple[int, ...]
) -> np.ndarray:
    """Warp ``crop`` (S', S', C) (float or uint8; any square size: S' != S is taken as the
    aligned crop resized) back into the photo's pixels through ``aligned``'s transform.

    Returns (H, W, C) float32 for ``photo_shape`` (H, W, ...), values in ``crop``'s own units
    (nothing is rescaled), bilinear; outside the crop the edge is repeated, so use it under
    :func:`photo_mask`.
    """
    crop = np.asarray(crop)
    if crop.ndim not in (2, 3) or crop.shape[0] != crop.shape[1]:
        raise ValueError(f"crop must be a square (S, S, C) array, got shape {crop.shape}")
    H, W = _check_shape(photo_shape)
    M = _crop_to_photo(aligned, crop.shape[0])
    out = cv2.warpAffine(
        crop.astype(np.float32, copy=False),
        M,
        (W, H),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if crop.ndim == 3 and out.ndim == 2:
        out = out[..., None]
    return out


def warp_mask_to_photo(
    mask: np.ndarray, aligned: AlignedFace, photo_shape: tuple[int, ...]
) -> np.ndarray:
    """Warp a crop-space ``mask`` (S', S') in [0, 1] into the photo: (H, W) float32, exactly 0
    wherever the mask's support does not reach (bilinear, zero outside the crop)."""
    mask = np.asarray(mask, np.float32)
    if mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ValueError(f"mask must be a square (S, S) array, got shape {mask.shape}")
    H, W = _check_shape(photo_shape)
    M = _crop_to_photo(aligned, mask.shape[0])
    out = cv2.warpAffine(
        mask,
        M,
        (W, H),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0.0,
    )
    return np.clip(out, 0.0, 1.0)


def photo_mask(
    aligned: AlignedFace, photo_shape: tuple[int, ...], feather: float = 0.08
) -> np.ndarray:
    """(H, W) float32 in [0, 1]: :func:`face_mask` of ``aligned``'s frame in the photo's
    pixels; exactly 0 away from the face."""
    S = aligned.frame.image_size
    # the mask is drawn at the photo's resolution of the face (at least S), so its edge stays
    # smooth when the face is large in the photo
    size = S * max(1, min(8, math.ceil(1.0 / _scale(aligned.matrix))))
    return warp_mask_to_photo(face_mask(size, aligned.frame, feather), aligned, photo_shape)


def paste_back(
    photo: np.ndarray,
    edited_crop: np.ndarray,
    aligned: AlignedFace,
    *,
    feather: float = 0.08,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend ``edited_crop`` (S', S', 3), uint8 or float in [0, 255], back into ``photo``
    (H, W, 3) uint8 RGB under the face mask (``mask`` (S'', S'') in crop space, or
    :func:`face_mask` with ``feather``); returns a new (H, W, 3) uint8 image.

    Pixels where the warped mask is 0 are returned bit-identical to ``photo``.
    """
    _check_image(photo, "photo")
    if mask is None:
        m = photo_mask(aligned, photo.shape, feather)
    else:
        m = warp_mask_to_photo(mask, aligned, photo.shape)
    edited = warp_to_photo(np.asarray(edited_crop), aligned, photo.shape)
    inside = m > 0
    out = photo.copy()
    if inside.any():
        mi = m[inside][:, None]
        blend = photo[inside].astype(np.float32) * (1.0 - mi) + edited[inside] * mi
        out[inside] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return out

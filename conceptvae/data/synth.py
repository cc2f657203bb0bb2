"""SynthFaces: a procedural face renderer that writes CelebA's exact official on-disk layout.

There is no real CelebA here, so SynthFaces is the embedded default dataset for the demo, the
tests and the benchmarks. Each image is drawn from a :class:`FaceParams` record: identity-level
traits (sex, age, skin, face shape, hair, eye colour, beard) fixed per person, and per-image
variation (expression, accessories, make-up, pose, lighting, background). The labels are the
truth the renderer draws from, so a person looking at an image agrees with its labels for the
attributes in :data:`RENDERED_ATTRIBUTES`; all other CelebA attributes are written as -1.

Everything is a pure function of ``(seed, index, n)``: the person behind image ``index`` comes
from a layout built from ``(seed, n)``, the person's traits from ``(seed, identity)`` and the
image's variation from ``(seed, index)``, so the JPEG bytes do not depend on the worker count.

Drawing is done in CelebA's aligned frame (eyes and mouth at :data:`ALIGNED_TEMPLATE`) on a
float canvas with a margin, from anti-aliased polygons (``cv2.fillPoly`` with ``LINE_AA`` and
sub-pixel ``shift``) used as soft masks, shaded by a directional light on ellipsoid normals,
then warped once by the pose (roll, scale, shift) into the 178 x 218 image.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from conceptvae._fs import staged_dir
from conceptvae._parallel import worker_pool
from conceptvae.data import ALIGNED_SIZE, ALIGNED_TEMPLATE, CELEBA_ATTRIBUTES, LANDMARK_NAMES

__all__ = [
    "FaceParams",
    "RENDERED_ATTRIBUTES",
    "label_grid",
    "render_face",
    "sample_params",
    "synth_labels",
    "with_attribute",
    "write_synthfaces",
]

RENDERED_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips",
    "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby",
    "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "Male",
    "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Pale_Skin",
    "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair",
    "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie",
    "Young",
)  # fmt: skip
"""The attributes SynthFaces really draws; every other CelebA attribute is always -1."""

HAIR_COLOURS: tuple[str, ...] = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
_ATTR_INDEX = {a: i for i, a in enumerate(CELEBA_ATTRIBUTES)}

_IMG_W, _IMG_H = ALIGNED_SIZE
_M = 16  # canvas margin, so that rolling the face does not pull in empty corners
_CW, _CH = _IMG_W + 2 * _M, _IMG_H + 2 * _M
_EYE_L = np.array(ALIGNED_TEMPLATE["lefteye"], np.float64) - 1.0  # 0-based canonical frame
_EYE_R = np.array(ALIGNED_TEMPLATE["righteye"], np.float64) - 1.0
_MOUTH = np.array(ALIGNED_TEMPLATE["mouth"], np.float64) - 1.0
_CENTRE = (_EYE_L + _EYE_R + _MOUTH) / 3.0  # the point the pose rotates and scales about
_FX = float((_EYE_L[0] + _EYE_R[0]) / 2)  # face mid-line x
_EY = float(_EYE_L[1])  # eye line y
_MY = float(_MOUTH[1])  # mouth line y


# ---------------------------------------------------------------------------------------------
# parameters


@dataclass
class FaceParams:
    """Everything needed to draw one SynthFaces image.

    ``attrs`` holds the rendered attributes (names from :data:`RENDERED_ATTRIBUTES`) as booleans;
    the renderer draws from these flags, so flipping one (see :func:`with_attribute`) changes
    what is drawn and nothing else. Colours are RGB triples in [0, 1]; lengths are pixels of the
    aligned 178 x 218 frame.
    """

    seed: int
    index: int
    identity: int  # 1-based person id
    partition: int  # 0 train, 1 valid, 2 test
    attrs: dict[str, bool]
    # identity-level look
    # Sizes are before the attributes' own changes (Male widens the jaw, Big_Nose widens the
    # nose, Narrow_Eyes halves the eye opening, ...), which the renderer applies from `attrs`.
    skin: tuple[float, float, float]  # skin tone when not Pale_Skin
    age: float  # years; wrinkles are drawn only when attrs["Young"] is False
    face_w: float  # half-width of the face at the cheeks
    chin_y: float  # y of the chin
    jaw_n: float  # superellipse exponent of the lower face (2 oval, 3 square)
    eye_rgb: tuple[float, float, float]
    eye_w: float  # half-width of an eye
    eye_open: float  # half-height of an open eye
    brow_thick: float
    brow_lift: float  # brow height above the eye
    nose_w: float  # half-width of the nose at the nostrils
    lip_h: float  # lip thickness
    mouth_w: float  # half-width of a neutral mouth
    ear_size: float
    hair_style: str  # long, bob, updo, pixie, short, medium, buzz
    hair_vol: float  # how far hair stands off the skull
    hair_len: float  # y where long hair ends
    hair_part: float  # -1 .. 1, where the parting is
    hair_shade: float  # 0 .. 1, the shade within the hair-colour family
    hair_other: tuple[float, float, float]  # hair colour when no hair-colour flag is set
    hairline: float  # y of the hairline at the middle of the forehead
    beard_full: bool  # a beard (No_Beard False) is a full beard rather than a goatee/moustache
    beard_density: float
    # per-image variation
    smile: float  # 0 .. 1 amount within the Smiling / not Smiling range
    mouth_open: float  # 0 .. 1 amount of opening when Mouth_Slightly_Open
    roll: float  # degrees
    scale: float
    shift: tuple[float, float]
    yaw: float  # pixels of horizontal shift between the face outline and the inner features
    gaze: tuple[float, float]
    light_dir: tuple[float, float, float]  # unit vector towards the light (x right, y down, z out)
    light_key: float
    light_amb: float
    light_tint: tuple[float, float, float]
    bg_colours: tuple[tuple[float, float, float], ...]
    bg_angle: float
    cloth_rgb: tuple[float, float, float]
    neckline: float  # y of the garment's neckline at the middle
    glasses_style: int  # 0 round, 1 rectangular, 2 thin metal, 3 cat-eye
    glasses_rgb: tuple[float, float, float]
    sunglasses: bool
    hat_style: int  # 0 beanie, 1 cap, 2 wide-brimmed
    hat_rgb: tuple[float, float, float]
    lipstick_rgb: tuple[float, float, float]
    eyeshadow_rgb: tuple[float, float, float]
    earring_style: int  # 0 stud, 1 hoop, 2 drop
    jewel_rgb: tuple[float, float, float]
    tie_rgb: tuple[float, float, float]
    blur: float  # Gaussian sigma used when attrs["Blurry"]
    detail_seed: int

    @property
    def labels(self) -> np.ndarray:
        """(40,) int8 in {-1, 1} over ``CELEBA_ATTRIBUTES``."""
        out = np.full(len(CELEBA_ATTRIBUTES), -1, np.int8)
        for name, on in self.attrs.items():
            if on:
                out[_ATTR_INDEX[name]] = 1
        return out


def with_attribute(params: FaceParams, name: str, value: bool | int) -> FaceParams:
    """A copy of ``params`` with rendered attribute ``name`` set (True/1 on, False/-1/0 off).

    Setting one hair colour clears the other three. Everything else stays as it was, so the
    two renders differ only where the attribute is drawn.
    """
    if name not in RENDERED_ATTRIBUTES:
        raise ValueError(
            f"{name!r} is not drawn by SynthFaces: choose one of {', '.join(RENDERED_ATTRIBUTES)}"
        )
    on = bool(value) and value != -1
    attrs = dict(params.attrs)
    if on and name in HAIR_COLOURS:
        for h in HAIR_COLOURS:
            attrs[h] = False
    attrs[name] = on
    return dataclasses.replace(params, attrs=attrs)


# ---------------------------------------------------------------------------------------------
# sampling: layout (who is in which image), identities, images


@dataclass(frozen=True)
class _Layout:
    identity: np.ndarray  # (n,) int32, 1-based
    partition: np.ndarray  # (n,) int8


@functools.lru_cache(maxsize=8)
def _layout(seed: int, n: int) -> _Layout:
    """People, their image counts and the identity-disjoint 80/10/10 split, for (seed, n).

    Like CelebA, files are ordered train, then valid, then test, and a person's images are
    scattered within their partition.
    """
    rng = np.random.default_rng([seed, n, 0x5EED])
    sizes: list[int] = []
    total = 0
    while total < n:
        k = int(5 + rng.binomial(25, 0.6))  # 5 .. 30 images, 20 on average (CelebA: ~20)
        k = min(k, n - total)
        sizes.append(k)
        total += k
    target = np.array([0.8, 0.1, 0.1])
    counts = np.zeros(3)
    part_of = np.empty(len(sizes), np.int8)
    done = 0
    for i, k in enumerate(sizes):
        deficit = target * (done + k) - counts
        p = int(np.argmax(deficit))
        empty = [q for q in (1, 2) if counts[q] == 0]
        if i > 0 and empty and len(sizes) - i <= len(empty):
            p = empty[0]  # a small set still gets a valid and a test person
        part_of[i] = p
        counts[p] += k
        done += k
    ident = np.repeat(np.arange(1, len(sizes) + 1, dtype=np.int32), sizes)
    parts = np.repeat(part_of, sizes)
    order = []
    for p in range(3):
        idx = np.flatnonzero(parts == p)
        order.append(idx[rng.permutation(len(idx))])
    order = np.concatenate(order)
    return _Layout(identity=ident[order], partition=parts[order])


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    h = (h % 1.0) * 6.0
    i = int(h)
    f = h - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i % 6]
    return (float(r), float(g), float(b))


_SKIN_TONES = np.array(
    [
        (0.93, 0.78, 0.68),  # light
        (0.90, 0.74, 0.62),
        (0.86, 0.68, 0.55),  # light-medium
        (0.80, 0.62, 0.48),  # olive / medium
        (0.70, 0.52, 0.38),  # tan
        (0.55, 0.38, 0.27),  # brown
        (0.40, 0.27, 0.19),  # dark brown
    ]
)
_SKIN_P = np.array([0.24, 0.22, 0.20, 0.14, 0.10, 0.06, 0.04])
_PALE = np.array((0.96, 0.85, 0.80))
_EYE_COLOURS = [
    (0.30, 0.18, 0.10),
    (0.20, 0.12, 0.07),
    (0.25, 0.42, 0.62),
    (0.30, 0.45, 0.30),
    (0.45, 0.35, 0.18),
    (0.45, 0.50, 0.55),
]
_OTHER_HAIR = [  # hair that is none of black, blond, brown and gray
    (0.56, 0.23, 0.10),  # ginger
    (0.62, 0.31, 0.15),  # copper
    (0.40, 0.14, 0.08),  # auburn
    (0.40, 0.14, 0.08),
    (0.30, 0.09, 0.07),  # dark auburn
    (0.30, 0.09, 0.07),
    (0.34, 0.08, 0.12),  # burgundy
    (0.70, 0.34, 0.56),  # dyed pink
    (0.34, 0.25, 0.58),  # dyed purple
    (0.20, 0.40, 0.58),  # dyed blue
]


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, ident: int) -> dict:
    """The traits of person ``ident`` (identity flags, look and propensities) for ``seed``."""
    r = np.random.default_rng([seed, ident, 0x1DE7]).random(64)
    male = bool(r[0] < 0.42)
    young = bool(r[1] < (0.68 if male else 0.84))
    age = 19 + 19 * r[2] if young else 40 + 36 * r[2]
    pale = bool(r[3] < (0.025 if male else 0.06))
    # the skin tone used when not Pale_Skin (the renderer draws pale skin from the flag)
    tone = int(np.searchsorted(np.cumsum(_SKIN_P), r[4] * _SKIN_P.sum()))
    tone = min(tone, len(_SKIN_TONES) - 2)
    skin = _SKIN_TONES[tone] + (_SKIN_TONES[tone + 1] - _SKIN_TONES[tone]) * r[5]
    skin = skin * (0.97 + 0.06 * r[6])
    chubby = bool(r[7] < ((0.07 if young else 0.16) if male else 0.035))
    f: dict[str, bool] = {"Male": male, "Young": young, "Pale_Skin": pale, "Chubby": chubby}
    f["Double_Chin"] = chubby and (not young or r[8] < 0.4)
    f["Bags_Under_Eyes"] = bool(r[9] < (0.12 if young else 0.55))
    f["Bushy_Eyebrows"] = bool(r[10] < (0.26 if male else 0.05))
    f["Arched_Eyebrows"] = bool(r[11] < (0.06 if male else 0.42))
    f["Big_Nose"] = bool(r[12] < (0.34 if male else 0.13))
    f["Big_Lips"] = bool(r[13] < (0.18 if male else 0.28))
    f["Narrow_Eyes"] = bool(r[14] < 0.115)

    # hair: style first, then colour (gray and baldness come with age)
    bald = male and r[15] < (0.015 if young else 0.18)
    receding = (not bald) and r[16] < ((0.08 if young else 0.35) if male else 0.03)
    if bald:
        style = "bald"
    elif male:
        style = ["short"] * 9 + ["medium"] * 6 + ["buzz"] * 4 + ["long"]
        style = style[int(r[17] * len(style))]
    else:
        style = ["long"] * 11 + ["bob"] * 5 + ["updo"] * 2 + ["pixie"] * 2
        style = style[int(r[17] * len(style))]
    f["Bald"] = bald
    f["Receding_Hairline"] = bool(receding)
    f["Bangs"] = style not in ("bald", "updo", "buzz") and bool(r[18] < (0.09 if male else 0.21))
    wavy = straight = False
    if style in ("long", "bob", "medium", "pixie", "short"):
        p_wavy, p_straight = (0.15, 0.15) if male else (0.55, 0.40)
        wavy = bool(r[19] < p_wavy)
        straight = (not wavy) and bool(r[19] < p_wavy + p_straight)
    f["Wavy_Hair"], f["Straight_Hair"] = wavy, straight
    colour = None
    if not bald:
        if r[20] < (0.004 if young else 0.17):
            colour = "Gray_Hair"
        else:
            u = r[21]
            if tone >= 4:  # darker skin: mostly black hair
                cum = [("Black_Hair", 0.72), ("Brown_Hair", 0.10), ("Blond_Hair", 0.02)]
            else:
                cum = [("Blond_Hair", 0.05 if male else 0.26)]
                cum += [("Black_Hair", 0.30 if male else 0.19), ("Brown_Hair", 0.25)]
            acc = 0.0
            for name, p in cum:
                acc += p
                if u < acc:
                    colour = name
                    break
    for h in HAIR_COLOURS:
        f[h] = colour == h
    dyed = (not male) and r[23] > 0.9  # a few women dye their hair pink, purple or blue
    other = _OTHER_HAIR[int(r[22] * 7) if not dyed else 7 + int(r[22] * 3)]

    # facial hair (male only)
    beard_full = False
    no_beard, goatee, moustache, sideburns = True, False, False, False
    if male:
        b = r[24]
        if b < 0.20:
            no_beard, beard_full, moustache = False, True, r[25] < 0.9
            sideburns = r[26] < 0.6
        elif b < 0.33:
            no_beard, goatee, moustache = False, True, r[25] < 0.5
        elif b < 0.38:
            no_beard, moustache = False, True
        else:
            sideburns = r[26] < 0.06
    f["No_Beard"], f["Goatee"], f["Mustache"], f["Sideburns"] = (
        no_beard,
        goatee,
        bool(moustache),
        bool(sideburns),
    )

    look = {
        "skin": tuple(float(c) for c in np.clip(skin, 0, 1)),
        "age": float(age),
        "face_w": float(40.5 + 2.5 * (r[27] - 0.5)),
        "chin_y": float(185.0 + 4 * (r[28] - 0.5)),
        "jaw_n": float(2.0 + 0.35 * r[29]),
        "eye_rgb": _EYE_COLOURS[int(r[30] * len(_EYE_COLOURS))],
        "eye_w": float(8.6 + 1.0 * r[31]),
        "eye_open": float(4.1 + 0.7 * r[32]),
        "brow_thick": float(2.2 + r[33]),
        "brow_lift": float(12.5 + 2.5 * r[34]),
        "nose_w": float(6.4 + r[35]),
        "lip_h": float(3.6 + 0.7 * r[36]),
        "mouth_w": float(14.5 + 2.0 * r[37]),
        "ear_size": float(0.9 + 0.25 * r[38]),
        "hair_style": style,
        "hair_vol": float(
            {"long": 9, "bob": 11, "updo": 3, "pixie": 6, "short": 5, "medium": 8, "buzz": 1.5}.get(
                style, 0
            )
            + 4 * r[39]
        ),
        "hair_len": float(195 + 45 * r[40]),
        "hair_part": float(2 * r[41] - 1),
        "hair_shade": float(r[42]),
        "hair_other": tuple(float(c) for c in other),
        "hairline": float((60.0 if receding else 69.0) + 4 * r[43]),
        "beard_full": bool(beard_full),
        "beard_density": float(0.75 + 0.25 * r[44]),
    }
    prop = {
        "smile_bias": 0.12 * (r[45] - 0.5),
        "glasses": r[46] < (0.20 if male else 0.12),
        "hats": r[47] < 0.10,
        "lipstick": (not male) and r[48] < 0.88,
        "pierced": r[49] < (0.01 if male else 0.45),
        "suits": male and r[50] < 0.25,
        "stubbly": male and no_beard and r[51] < 0.32,
        "glasses_style": int(r[52] * 4),
        "glasses_rgb": [(0.05, 0.05, 0.05), (0.30, 0.16, 0.08), (0.72, 0.62, 0.35),
                        (0.62, 0.62, 0.66), (0.45, 0.05, 0.08)][int(r[53] * 5)],
        "hat_style": int(r[54] * 3),
        "hat_hue": float(r[55]),
        "lipstick_hue": float(r[56]),
        "earring_style": int(r[57] * 3),
        "gold": r[58] < 0.6,
    }  # fmt: skip
    return {"flags": f, "look": look, "prop": prop}


def _check_seed_n(seed: int, n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of images, got {n!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def sample_params(seed: int, index: int, n: int) -> FaceParams:
    """The parameters of image ``index`` (0-based) of a SynthFaces set of ``n`` images.

    Deterministic in ``(seed, index, n)`` and independent of call order: the person comes from
    the ``(seed, n)`` layout, their traits from ``(seed, identity)``, the image's expression,
    accessories, pose, lighting and background from ``(seed, index)``.
    """
    _check_seed_n(seed, n)
    if not 0 <= index < n:
        raise ValueError(f"index {index} is outside a set of {n} images (0 .. {n - 1})")
    lay = _layout(int(seed), int(n))
    ident = int(lay.identity[index])
    person = _identity(int(seed), ident)
    prop = person["prop"]
    f = dict(person["flags"])
    male = f["Male"]
    rng = np.random.default_rng([seed, index, 0x1A6E])
    r = rng.random(64)

    smiling = bool(r[0] < (0.39 if male else 0.56) + prop["smile_bias"])
    f["Smiling"] = smiling
    f["Mouth_Slightly_Open"] = bool(r[1] < (0.68 if smiling else 0.27))
    f["Eyeglasses"] = bool(r[2] < (0.55 if prop["glasses"] else 0.008))
    f["Wearing_Hat"] = bool(r[3] < (0.40 if prop["hats"] else 0.012))
    lipstick = bool(r[4] < ((0.92 if prop["lipstick"] else 0.05) if not male else 0.004))
    f["Wearing_Lipstick"] = lipstick
    f["Heavy_Makeup"] = lipstick and bool(r[5] < 0.8)
    f["Wearing_Earrings"] = bool(r[6] < (0.7 if prop["pierced"] else 0.0))
    f["Wearing_Necklace"] = (not male) and bool(r[7] < 0.2)
    f["Wearing_Necktie"] = male and bool(r[8] < (0.65 if prop["suits"] else 0.01))
    f["Rosy_Cheeks"] = bool(r[9] < (0.03 if male else 0.10))
    f["Blurry"] = bool(r[10] < 0.05)
    f["5_o_Clock_Shadow"] = bool(prop["stubbly"] and r[11] < 0.8)
    if f["Wearing_Hat"]:
        # under a hat the scalp and the hairline cannot be seen
        f["Bald"] = False
        f["Receding_Hairline"] = False

    az = math.radians(-65 + 130 * r[12])
    el = math.radians(10 + 40 * r[13])
    light = (math.sin(az) * math.cos(el), -math.sin(el), math.cos(az) * math.cos(el))
    warm = r[14] - 0.5
    tint = (1.0 + 0.08 * warm, 1.0, 1.0 - 0.10 * warm)
    n_bg = 3
    bg = []
    base_h = r[15]
    for k in range(n_bg):
        h = base_h + (r[16 + k] - 0.5) * 0.35
        s = 0.08 + 0.55 * r[19 + k] ** 1.3
        v = 0.25 + 0.7 * r[22 + k]
        bg.append(_hsv(h, s, v))
    cloth = _hsv(r[25], 0.1 + 0.6 * r[26], 0.15 + 0.7 * r[27])
    if f["Wearing_Necktie"]:
        cloth = _hsv(0.6 + 0.1 * r[25], 0.2 * r[26], 0.12 + 0.3 * r[27])  # a dark jacket
    lip_h = prop["lipstick_hue"]
    lipstick_rgb = [(0.70, 0.08, 0.12), (0.55, 0.05, 0.15), (0.82, 0.25, 0.35),
                    (0.80, 0.30, 0.25), (0.45, 0.08, 0.20)][int(lip_h * 5)]  # fmt: skip
    shadow_rgb = _hsv(r[28], 0.35 + 0.3 * r[29], 0.35 + 0.35 * r[30])
    hat_rgb = _hsv(prop["hat_hue"] + 0.1 * (r[31] - 0.5), 0.2 + 0.6 * r[32], 0.15 + 0.6 * r[33])
    jewel = (0.85, 0.68, 0.30) if prop["gold"] else (0.80, 0.80, 0.84)
    tie_rgb = _hsv(r[34], 0.4 + 0.5 * r[35], 0.3 + 0.5 * r[36])

    look = person["look"]
    return FaceParams(
        seed=int(seed),
        index=int(index),
        identity=ident,
        partition=int(lay.partition[index]),
        attrs={a: bool(f.get(a, False)) for a in RENDERED_ATTRIBUTES},
        **look,
        smile=float(r[37]),
        mouth_open=float(r[38]),
        roll=float(8.0 * (2 * r[39] - 1)),
        scale=float(1.0 + 0.06 * (2 * r[40] - 1)),
        shift=(float(2.0 * (2 * r[41] - 1)), float(2.0 * (2 * r[42] - 1))),
        yaw=float(3.5 * (2 * r[43] - 1)),
        gaze=(float(1.2 * (2 * r[44] - 1)), float(0.5 * (2 * r[45] - 1))),
        light_dir=tuple(float(c) for c in light),
        light_key=float(0.55 + 0.3 * r[46]),
        light_amb=float(0.30 + 0.15 * r[47]),
        light_tint=tuple(float(c) for c in tint),
        bg_colours=tuple(bg),
        bg_angle=float(2 * math.pi * r[48]),
        cloth_rgb=cloth,
        neckline=float(200 + 14 * r[49]),
        glasses_style=int(prop["glasses_style"]),
        glasses_rgb=prop["glasses_rgb"],
        sunglasses=bool(r[50] < 0.22),
        hat_style=int(prop["hat_style"]),
        hat_rgb=hat_rgb,
        lipstick_rgb=lipstick_rgb,
        eyeshadow_rgb=shadow_rgb,
        earring_style=int(prop["earring_style"]),
        jewel_rgb=jewel,
        tie_rgb=tie_rgb,
        blur=float(1.6 + 1.2 * r[51]),
        detail_seed=int(rng.integers(0, 2**31 - 1)),
    )


def synth_labels(seed: int, n: int) -> np.ndarray:
    """(n, 40) int8 in {-1, 1}: exactly the labels ``write_synthfaces(out, n, seed)`` writes."""
    _check_seed_n(seed, n)
    return np.stack([sample_params(seed, i, n).labels for i in range(n)])


# ---------------------------------------------------------------------------------------------
# drawing helpers: soft masks on crops of a float canvas in the canonical (aligned, 0-based) frame

_GX, _GY = np.meshgrid(np.arange(_CW, dtype=np.float32) - _M, np.arange(_CH, dtype=np.float32) - _M)
_NOISE = np.random.default_rng(20240607).standard_normal((384, 384)).astype(np.float32)
_NOISE_SOFT = cv2.GaussianBlur(_NOISE, (0, 0), 2.5)
_NOISE_SOFT /= _NOISE_SOFT.std()
_STREAK = cv2.GaussianBlur(_NOISE, (0, 0), sigmaX=0.5, sigmaY=1.6)
_STREAK /= _STREAK.std()
_LIN12 = np.linspace(0.0, 1.0, 12)


def _f3(c) -> np.ndarray:
    return np.asarray(c, np.float32)


def _lerp(a, b, t) -> np.ndarray:
    a, b = _f3(a), _f3(b)
    return a + (b - a) * np.float32(t)


@functools.lru_cache(maxsize=64)
def _unit_circle(k: int, n: float) -> tuple[np.ndarray, np.ndarray]:
    t = np.linspace(0, 2 * np.pi, k, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    if n != 2.0:
        e = 2.0 / n
        c = np.sign(c) * np.abs(c) ** e
        s = np.sign(s) * np.abs(s) ** e
    return c, s


def _ellipse_pts(cx, cy, rx, ry, angle=0.0, k=28, n=2.0) -> np.ndarray:
    """Points of a (super)ellipse; ``n`` = 2 is an ellipse, larger is boxier."""
    c, s = _unit_circle(k, float(n))
    x, y = rx * c, ry * s
    if angle:
        ca, sa = math.cos(angle), math.sin(angle)
        x, y = ca * x - sa * y, sa * x + ca * y
    out = np.empty((k, 2))
    out[:, 0] = cx + x
    out[:, 1] = cy + y
    return out


@functools.lru_cache(maxsize=32)
def _bezier_weights(k: int) -> np.ndarray:
    t = np.linspace(0, 1, k)[:, None]
    return np.hstack([(1 - t) ** 2, 2 * (1 - t) * t, t**2])


def _quad(p0, p1, p2, k=12) -> np.ndarray:
    """Quadratic Bezier from p0 to p2 with control point p1."""
    return _bezier_weights(k) @ np.array([p0, p1, p2], np.float64)


class _Canvas:
    """A float32 RGB canvas in [0, 1] with the canonical frame offset by the margin."""

    def __init__(self) -> None:
        self.img = np.zeros((_CH, _CW, 3), np.float32)

    @staticmethod
    def box(pts: np.ndarray, pad: float):
        x0 = max(int(math.floor(pts[:, 0].min() - pad)) + _M, 0)
        x1 = min(int(math.ceil(pts[:, 0].max() + pad)) + _M + 1, _CW)
        y0 = max(int(math.floor(pts[:, 1].min() - pad)) + _M, 0)
        y1 = min(int(math.ceil(pts[:, 1].max() + pad)) + _M + 1, _CH)
        if x1 <= x0 or y1 <= y0:
            return None
        return (y0, y1, x0, x1)

    @staticmethod
    def _fixed(polys, b):
        off = np.array([b[2] - _M, b[0] - _M], np.float64)
        return [np.round((np.asarray(p, np.float64) - off) * 16).astype(np.int32) for p in polys]

    def mask(self, polys, blur=0.0, pad=2.0, box=None):
        """Anti-aliased fill of ``polys`` as an alpha crop in [0, 1]; returns (alpha, box)."""
        b = box or self.box(np.concatenate(polys), pad + 3 * blur)
        if b is None:
            return None, None
        m = np.zeros((b[1] - b[0], b[3] - b[2]), np.uint8)
        cv2.fillPoly(m, self._fixed(polys, b), 255, cv2.LINE_AA, 4)
        a = m.astype(np.float32) * np.float32(1 / 255)
        if blur:
            a = cv2.GaussianBlur(a, (0, 0), blur)
        return a, b

    def stroke(self, lines, thick=1, blur=0.0, closed=False, pad=2.0, box=None):
        """Anti-aliased polylines as an alpha crop; returns (alpha, box)."""
        b = box or self.box(np.concatenate(lines), pad + thick + 3 * blur)
        if b is None:
            return None, None
        m = np.zeros((b[1] - b[0], b[3] - b[2]), np.uint8)
        cv2.polylines(m, self._fixed(lines, b), closed, 255, int(thick), cv2.LINE_AA, 4)
        a = m.astype(np.float32) * np.float32(1 / 255)
        if blur:
            a = cv2.GaussianBlur(a, (0, 0), blur)
        return a, b

    def view(self, b) -> np.ndarray:
        return self.img[b[0] : b[1], b[2] : b[3]]

    def fill(self, a, b, col, op=1.0) -> None:
        """Paint colour (or an (h, w, 3) layer) ``col`` through alpha ``a``."""
        if a is None:
            return
        v = self.view(b)
        w = a[..., None] if op == 1.0 else a[..., None] * np.float32(op)
        v += w * (np.asarray(col, np.float32) - v)

    def mul(self, a, b, f) -> None:
        """Multiply by ``f`` (scalar or RGB) where ``a`` is 1, smoothly less elsewhere."""
        if a is None:
            return
        v = self.view(b)
        f = np.asarray(f, np.float32) - 1.0
        v *= 1.0 + a[..., None] * f

    def grid(self, b):
        return _GX[b[0] : b[1], b[2] : b[3]], _GY[b[0] : b[1], b[2] : b[3]]


def _shade(X, Y, cx, cy, rx, ry_up, ry_down, light, flat=0.55):
    """Lambert + Blinn terms for an ellipsoid-like surface; ``ry_down`` None is a cylinder.

    Returns (diffuse, specular_base) maps; ``flat`` < 1 makes the vertical curvature gentler.
    """
    Lx, Ly, Lz = light
    u = (X - cx) * np.float32(1 / rx)
    if ry_down is None:
        v = np.minimum(Y - cy, 0) * np.float32(1 / ry_up)
    else:
        v = np.where(cy > Y, (Y - cy) * np.float32(1 / ry_up), (Y - cy) * np.float32(1 / ry_down))
    nx = u * np.float32(0.95)
    ny = v * np.float32(flat)
    nz = np.sqrt(np.clip(1.0 - nx * nx - ny * ny, 0.04, 1.0))
    lam = np.clip(nx * Lx + ny * Ly + nz * Lz, 0.0, 1.0)
    hx, hy, hz = Lx, Ly, Lz + 1.0
    hn = 1.0 / math.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.clip((nx * hx + ny * hy + nz * hz) * np.float32(hn), 0.0, 1.0)
    return lam, spec


def _pow(x: np.ndarray, k: int) -> np.ndarray:
    """x**k for a small integer k by repeated squaring (much faster than a float power)."""
    out, sq = None, x
    while k:
        if k & 1:
            out = sq if out is None else out * sq
        k >>= 1
        if k:
            sq = sq * sq
    return out


def _hair_rgb(p: FaceParams) -> np.ndarray:
    a, t = p.attrs, p.hair_shade
    if a["Black_Hair"]:
        return _lerp((0.045, 0.04, 0.04), (0.12, 0.085, 0.07), t)
    if a["Brown_Hair"]:
        return _lerp((0.24, 0.15, 0.09), (0.44, 0.30, 0.18), t)
    if a["Blond_Hair"]:
        return _lerp((0.80, 0.64, 0.36), (0.94, 0.86, 0.64), t)
    if a["Gray_Hair"]:
        return _lerp((0.55, 0.55, 0.56), (0.88, 0.88, 0.89), t)
    return _f3(p.hair_other)


def _brow_rgb(p: FaceParams, hair: np.ndarray) -> np.ndarray:
    a = p.attrs
    if a["Blond_Hair"]:
        return _lerp(hair, (0.38, 0.27, 0.16), 0.55)
    if a["Gray_Hair"]:
        return _lerp(hair, (0.25, 0.24, 0.24), 0.45)
    if a["Bald"] or not any(a[h] for h in HAIR_COLOURS):
        return _lerp(hair, (0.16, 0.11, 0.08), 0.5)
    return hair * 0.85


def _noise(shape, ox, oy, tile=_NOISE) -> np.ndarray:
    h, w = shape
    oy %= tile.shape[0] - h
    ox %= tile.shape[1] - w
    return tile[oy : oy + h, ox : ox + w]


# ---------------------------------------------------------------------------------------------
# the renderer


def render_face(params: FaceParams) -> tuple[np.ndarray, np.ndarray]:
    """Draw one face.

    Returns the image, (218, 178, 3) uint8 RGB, and its landmarks, (5, 2) float32 (x, y) in
    1-based pixel coordinates in ``LANDMARK_NAMES`` order (left eye, right eye, nose, left and
    right mouth corners): the true positions of what was drawn.
    """
    img, marks, _ = _render(params)
    return img, marks


class _Face:
    """Geometry shared by the drawing steps (canonical frame, before the pose)."""

    def __init__(self, p: FaceParams) -> None:
        a = p.attrs
        self.p, self.a = p, a
        self.fx = _FX - 0.9 * p.yaw  # outline centre moves against the inner features
        self.male = male = a["Male"]
        chubby = a["Chubby"]
        self.W = p.face_w + (3.0 if male else 0.0) + (4.0 if chubby else 0.0)
        self.chin_y = p.chin_y + (4.0 if male else 0.0) + (2.0 if chubby else 0.0)
        self.jaw_n = p.jaw_n + (0.75 if male else 0.0) - (0.15 if chubby else 0.0)
        self.eye_open = p.eye_open * (0.56 if a["Narrow_Eyes"] else 1.0)
        self.brow_thick = (
            p.brow_thick + (0.8 if male else 0.0) + (2.2 if a["Bushy_Eyebrows"] else 0)
        )
        self.nose_w = p.nose_w + (1.0 if male else 0.0) + (3.4 if a["Big_Nose"] else 0.0)
        self.lip_h = (p.lip_h - (0.6 if male else 0.0)) * (1.45 if a["Big_Lips"] else 1.0)
        self.cy = 121.0  # widest line of the face
        self.top = 47.0  # top of the skull
        self.h_up = self.cy - self.top
        self.h_dn = self.chin_y - self.cy
        self.nw = self.W * (0.66 if self.male else 0.55) + (3 if a["Chubby"] else 0)
        self.old = 0.0 if a["Young"] else float(np.clip((p.age - 30) / 40, 0.45, 1.0))
        self.s = 0.55 + 0.45 * p.smile if a["Smiling"] else -0.22 + 0.3 * p.smile
        self.s -= 0.12 * self.old
        self.gap = (4.2 + 4.0 * p.mouth_open) if a["Mouth_Slightly_Open"] else 0.0
        self.mw = p.mouth_w * (1 + 0.17 * max(self.s, 0))
        self.mx, self.my = float(_MOUTH[0]), _MY
        self.nose_len = 3.5 if a["Big_Nose"] else 0.0  # the tip sits lower
        self.nx = _FX + 0.5 * p.yaw
        self.ny = _EY + 0.575 * (_MY - _EY) + self.nose_len
        self.eyes = (_EYE_L, _EYE_R)
        L = np.asarray(p.light_dir, np.float64)
        self.L = tuple(float(c) for c in L / np.linalg.norm(L))
        self.key, self.amb = p.light_key, p.light_amb
        self.tint = _f3(p.light_tint)
        self.lit = self.amb + self.key * max(self.L[2], 0.35)  # a typical front-facing shade
        pale = _PALE + np.float32(0.03) * (np.asarray(p.skin, np.float32) - 0.75)
        self.skin = _f3(pale if a["Pale_Skin"] else p.skin)
        self.hair = _hair_rgb(p)
        self.hairy = not a["Bald"]
        self.hair_light = None
        self.taper = 0.04 if self.male else 0.13
        self.outline = self.contour(np.linspace(0, 2 * np.pi, 96, endpoint=False))

    def contour(self, t: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Points of the head outline at angles ``t`` (0 right, pi/2 chin, pi left, 3pi/2 top);
        ``grow`` pushes the lower half out and down (a beard's volume)."""
        c, s = np.cos(t), np.sin(t)
        lower = s > 0
        n = np.where(lower, self.jaw_n, 2.0)
        e = 2.0 / n
        x = np.sign(c) * np.abs(c) ** e * (self.W + 0.4 * grow * np.clip(s, 0, 1))
        y = np.sign(s) * np.abs(s) ** e * np.where(lower, self.h_dn + grow, self.h_up)
        x = x * (1 - self.taper * np.clip(s, 0, 1) ** 2)
        return np.stack([self.fx + x, self.cy + y], 1)

    def face_x(self, y: float) -> float:
        """Half-width of the face outline at height ``y``."""
        if y < self.cy:
            r = (self.cy - y) / self.h_up
            return self.W * math.sqrt(max(1 - r * r, 0.0))
        r = min((y - self.cy) / self.h_dn, 1.0)
        n = self.jaw_n
        w = self.W * max(1 - r**n, 0.0) ** (1 / n)
        return w * (1 - self.taper * r**2)


def _render(p: FaceParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    f = _Face(p)
    cv = _Canvas()
    rng = np.random.default_rng(p.detail_seed)
    # every random draw happens here, whatever the flags, so flipping one attribute changes
    # only what that attribute draws
    r_bg = rng.random(24)
    r_hair = rng.random((96, 6))
    r_misc = rng.random(16)
    noise_off = rng.integers(0, 4096, size=8)

    _background(cv, f, r_bg)
    _hair_back(cv, f, r_hair)
    _neck_and_clothes(cv, f, r_misc)
    _ears(cv, f)
    _skin(cv, f, noise_off)
    _face_shading(cv, f)
    _beard(cv, f, noise_off)
    _eyes(cv, f, noise_off)
    _mouth(cv, f)
    _hair_front(cv, f, r_hair)
    if f.a["Wearing_Hat"]:
        _hat(cv, f, r_misc)
    if f.a["Eyeglasses"]:
        _glasses(cv, f)
    if f.a["Wearing_Earrings"]:
        _earrings(cv, f)

    # film grain, then the pose warp into the 178 x 218 frame
    grain = _noise((_CH, _CW), int(noise_off[6]), int(noise_off[7]))
    cv.img += grain[..., None] * np.float32(0.010)
    ang = math.radians(p.roll)
    A = p.scale * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    t = _CENTRE + np.asarray(p.shift) - A @ (_CENTRE + _M)
    warp = np.hstack([A, t[:, None]]).astype(np.float64)
    out = cv2.warpAffine(
        cv.img, warp, (_IMG_W, _IMG_H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    if f.a["Blurry"]:
        out = cv2.GaussianBlur(out, (0, 0), p.blur)
    img = cv2.convertScaleAbs(out, alpha=255.0)

    def place(pts):
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        return (pts - _CENTRE) @ A.T + _CENTRE + np.asarray(p.shift) + 1.0

    corners = [(f.mx - f.mw, f.my), (f.mx + f.mw, f.my)]
    marks = place([_EYE_L, _EYE_R, (f.nx, f.ny), *corners]).astype(np.float32)
    face = f.outline[f.outline[:, 1] > p.hairline - 4]
    box = place(face)
    x0, y0 = np.floor(box.min(0))
    x1, y1 = np.ceil(box.max(0))
    bbox = np.array([x0, y0, x1 - x0, y1 - y0], np.int32)
    return img, marks, bbox


def _background(cv: _Canvas, f: _Face, r: np.ndarray) -> None:
    p = f.p
    h, w = 50, 42
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = xs / (w - 1) - 0.5, ys / (h - 1) - 0.5
    c0, c1, c2 = (_f3(c) for c in p.bg_colours)
    d = u * math.cos(p.bg_angle) + v * math.sin(p.bg_angle)
    t = np.clip(d * 1.2 + 0.5, 0, 1)[..., None]
    t = t * t * (3 - 2 * t)
    low = c0 + (c1 - c0) * t
    for k in range(4):  # soft out-of-focus blobs
        bx, by = r[3 * k] - 0.5, r[3 * k + 1] - 0.5
        rad = 0.12 + 0.25 * r[3 * k + 2]
        g = np.exp(-((u - bx) ** 2 + (v - by) ** 2) / (rad * rad))[..., None]
        col = (c2, c1 * 1.15, c0 * 0.7, c2 * 1.2)[k]
        low += (np.clip(col, 0, 1) - low) * g * np.float32(0.45 + 0.4 * r[12 + k])
    low *= 1.0 - 0.35 * (u * u + v * v)[..., None]  # vignette
    low *= f.tint * np.float32(0.92 + 0.16 * r[20])
    cv.img[:] = cv2.resize(low, (_CW, _CH), interpolation=cv2.INTER_LINEAR)


def _hair_geometry(f: _Face):
    """Outer radii of the hair around the skull: (rx, ry) for the top cap."""
    vol = f.p.hair_vol
    return f.W + 0.7 * vol + 1.0, f.h_up + vol


def _hair_layer(cv: _Canvas, f: _Face, a, b, strands, dark: float = 1.0) -> None:
    """Shade and paint hair through alpha ``a``: ellipsoid light, sheen, strand texture."""
    if f.hair_light is None or f.hair_light[0].shape[0] < b[1]:
        # one light field for every hair layer, over the rows that have hair
        rx, ry = _hair_geometry(f)
        style = f.p.hair_style
        low = f.p.hair_len + 12 if style in ("long", "bob") else f.cy + 30
        rows = max(int(low) + _M, b[1])
        lam, spec = _shade(_GX[:rows], _GY[:rows], f.fx, f.cy, rx, ry, None, f.L, flat=0.8)
        f.hair_light = (lam, _pow(spec, 12))
    lam = f.hair_light[0][b[0] : b[1], b[2] : b[3]]
    spec12 = f.hair_light[1][b[0] : b[1], b[2] : b[3]]
    hair = f.hair
    lum = float(hair.mean())
    # grey-level maps first (one channel), colour only at the end
    shade = (f.amb * 0.9 + f.key * lam) * np.float32(dark)
    if strands:
        s = np.zeros(a.shape, np.float32)
        dark_l, light_l = strands
        cv2.polylines(s, _Canvas._fixed(dark_l, b), False, -1.0, 1, cv2.LINE_AA, 4)
        cv2.polylines(s, _Canvas._fixed(light_l, b), False, 1.0, 1, cv2.LINE_AA, 4)
        s = cv2.GaussianBlur(s, (0, 0), 0.6)
        k = np.float32(0.45 if lum < 0.2 else 0.3)
        shade *= 1.0 + k * s
        sheen = spec12 * np.float32(0.30 if lum < 0.2 else 0.22) * (1 + 0.6 * s)
    else:
        sheen = spec12 * np.float32(0.2)
    col = shade[..., None] * (hair * f.tint) + sheen[..., None] * (0.55 + 0.45 * hair)
    cv.fill(a, b, col)


def _strands(f: _Face, r: np.ndarray, y_end: float, wavy: bool, count: int):
    """Hair strands flowing from the parting over the skull, then down to ``y_end``.

    Returns two lists of (k, 2) polylines: strands drawn darker and strands drawn lighter.
    """
    rx, ry = _hair_geometry(f)
    part = f.p.hair_part
    q = r[:count]
    side = np.where(q[:, 0] < 0.5 + 0.25 * part, -1.0, 1.0)[:, None]
    th0 = -math.pi / 2 + 0.35 * part + 0.15 * (q[:, 1:2] - 0.5)
    th1 = -math.pi / 2 + side * (math.pi / 2 + 0.05 + 0.25 * q[:, 2:3])
    rho = 0.55 + 0.5 * q[:, 3:4]
    th = th0 + (th1 - th0) * _LIN12
    wave = (0.05 if wavy else 0.012) * np.sin(7 * th + 6.28 * q[:, 4:5])
    x = f.fx + (f.W + (rx - f.W) * rho) * np.cos(th) * (1 + wave)
    y = f.cy + (f.h_up + (ry - f.h_up) * rho) * np.sin(th) * (1 + wave)
    if y_end > f.cy + 4:
        y_last = y[:, -1:]
        yy = y_last + (y_end - y_last) * _LIN12[1:]
        amp = (2.5 if wavy else 0.6) * (1 + q[:, 5:6])
        xx = x[:, -1:] + side * 0.16 * (yy - y_last) + amp * np.sin(0.16 * yy + 6.28 * q[:, 5:6])
        x, y = np.hstack([x, xx]), np.hstack([y, yy])
    pts = np.stack([x, y], 2)
    return list(pts[0::2]), list(pts[1::2])


def _hair_back(cv: _Canvas, f: _Face, r: np.ndarray) -> None:
    """Hair behind the head and neck: long hair's back, an updo's bun, short hair's nape."""
    if not f.hairy or f.p.hair_style == "bald":
        return
    p, style = f.p, f.p.hair_style
    rx, ry = _hair_geometry(f)
    wavy = f.a["Wavy_Hair"]
    if style in ("long", "bob"):
        end = p.hair_len + 6 if style == "long" else 168 + 0.35 * (p.hair_len - 195)
        ys = np.linspace(f.cy, end, 10)
        flare = 0.20 if style == "long" else 0.10
        wob = (2.0 if wavy else 0.0) * np.sin(ys * 0.25)
        right = np.stack([f.fx + rx + flare * (ys - f.cy) + wob, ys], 1)
        left = np.stack([f.fx - rx - flare * (ys - f.cy) - wob, ys], 1)[::-1]
        # the polygon: right side down, across the bottom, left side up, over the top
        poly = np.vstack([right, left, _arc(f.fx, f.cy, rx, ry, math.pi, 2 * math.pi, 24)])
        a, b = cv.mask([poly], blur=0.8)
        _hair_layer(cv, f, a, b, _strands(f, r, end, wavy, 40), dark=0.62)
    else:
        ry2 = ry - 2
        poly = np.vstack(
            [
                _arc(f.fx, f.cy - 3, rx, ry2, math.pi, 2 * math.pi, 28),
                [(f.fx + rx - 2, f.cy + 18), (f.fx - rx + 2, f.cy + 18)],
            ]
        )
        a, b = cv.mask([poly], blur=0.8)
        _hair_layer(cv, f, a, b, None, dark=0.55)
        if style == "updo":
            cx = f.fx + 10 * p.hair_part
            bun = _ellipse_pts(cx, f.top - 4, 14, 11, k=32)
            a, b = cv.mask([bun], blur=0.7)
            _hair_layer(cv, f, a, b, _strands(f, r[40:], 0, False, 16), dark=0.85)


def _arc(cx, cy, rx, ry, t0, t1, k) -> np.ndarray:
    t = np.linspace(t0, t1, k)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _neck_and_clothes(cv: _Canvas, f: _Face, r: np.ndarray) -> None:
    p, a = f.p, f.a
    fx, nw = f.fx, f.nw
    # neck: a shaded cylinder
    neck = np.array(
        [(fx - nw, 140), (fx + nw, 140), (fx + nw + 1, 200), (fx + nw + 12, 240),
         (fx - nw - 12, 240), (fx - nw - 1, 200)]
    )  # fmt: skip
    am, b = cv.mask([neck])
    X, Y = cv.grid(b)
    lam, _ = _shade(X, Y, fx, 0.0, nw + 3, 1.0, None, f.L)
    col = (f.skin * f.tint)[None, None] * (f.amb + f.key * lam * 0.9)[..., None] * 0.88
    cv.fill(am, b, col)
    # the chin's shadow on the neck
    sh = f.outline + np.array([1.5 * f.L[0], 7.0 + 4 * max(-f.L[1], 0)])
    a2, _ = cv.mask([sh], blur=3.5, box=b)
    cv.mul(a2 * am, b, 0.55)
    if a["Double_Chin"]:  # a soft fold of skin under the chin
        dc = _ellipse_pts(fx, f.chin_y + 1.5, f.W * 0.5, 7, k=32)
        a3, b3 = cv.mask([dc], blur=2.0)
        X, Y = cv.grid(b3)
        lam, _ = _shade(X, Y, fx, f.chin_y - 4, f.W * 0.6, 12, 12, f.L)
        cv.fill(a3, b3, (f.skin * f.tint)[None, None] * (f.amb + f.key * lam * 0.9)[..., None])

    # shoulders and garment
    xs = np.linspace(nw + 1, 130, 16)
    ys = 197 + 30 * (1 - 1 / (1 + ((xs - nw) / 42) ** 2))
    neck_y = p.neckline if not a["Wearing_Necktie"] else 201
    ncol = np.linspace(-1, 1, 13)
    if p.neckline > 208 and not a["Wearing_Necktie"]:  # V neck
        nl = np.stack([fx + (nw + 1) * ncol, 197 + (neck_y - 197) * (1 - np.abs(ncol))], 1)
    else:
        nl = np.stack([fx + (nw + 1) * ncol, 197 + (neck_y - 197) * np.sqrt(1 - ncol**2)], 1)
    right = np.stack([fx + xs, ys], 1)
    left = np.stack([fx - xs, ys], 1)[::-1]
    cloth = np.vstack([left, nl, right, [(fx + 130, 260), (fx - 130, 260)]])
    ac, b = cv.mask([cloth])
    X, Y = cv.grid(b)
    lam, _ = _shade(X, Y, fx, 262, 125, 70, 70, f.L, flat=0.9)
    fold = 1 - 0.06 * np.sin((X - fx) * 0.09 + 6.28 * r[0]) * np.clip((Y - 200) / 20, 0, 1)
    col = (_f3(p.cloth_rgb) * f.tint)[None, None] * ((f.amb + f.key * lam) * fold)[..., None]
    cv.fill(ac, b, col)
    if a["Wearing_Necktie"]:
        _necktie(cv, f, nl)
    if a["Wearing_Necklace"]:
        bottom = min(p.neckline - 4, 203)
        phi = np.linspace(-1.2, 1.2, 25)
        chain = np.stack([fx + (nw - 1.5) * np.sin(phi) / math.sin(1.2),
                          180 + (bottom - 180) * np.cos(phi) ** 1.5], 1)  # fmt: skip
        jewel = _f3(p.jewel_rgb) * f.lit * 1.25
        a4, b4 = cv.stroke([chain], 1, blur=0.3)
        cv.mul(cv.stroke([chain + (0.8, 1.2)], 1, blur=0.8, box=b4)[0], b4, 0.75)
        cv.fill(a4, b4, jewel, 0.95)
        pend = _ellipse_pts(fx, bottom + 3.2, 2.4, 3.0, k=16)
        a5, b5 = cv.mask([pend], blur=0.3)
        cv.fill(a5, b5, jewel * 0.9)
        a6, b6 = cv.mask([_ellipse_pts(fx - 0.8, bottom + 2.3, 0.8, 0.9, k=8)], blur=0.4)
        cv.fill(a6, b6, (1, 1, 1), 0.7)


def _necktie(cv: _Canvas, f: _Face, nl: np.ndarray) -> None:
    fx, nw = f.fx, f.nw
    shirt = _f3((0.93, 0.94, 0.96) if f.p.tie_rgb[2] > 0.5 else (0.80, 0.86, 0.95)) * f.lit * 1.15
    v = np.array([(fx - nw - 6, 196), (fx + nw + 6, 196), (fx + 14, 240), (fx - 14, 240)])
    a, b = cv.mask([v])
    cv.fill(a, b, shirt)
    for sd in (-1, 1):
        collar = np.array(
            [(fx + sd * (nw + 4), 193), (fx + sd * 1, 207), (fx + sd * (nw + 8), 212)]
        )
        a, b = cv.mask([collar], blur=0.3)
        cv.fill(a, b, shirt * (0.92 if sd * f.L[0] < 0 else 1.0))
        lapel = np.array([(fx + sd * (nw + 8), 204), (fx + sd * 12, 240), (fx + sd * 30, 240)])
        a, b = cv.stroke([lapel[:2]], 1, blur=0.6)
        cv.mul(a, b, 0.6)
    tie = _f3(f.p.tie_rgb) * f.lit * 1.1
    knot = np.array([(fx - 4.5, 203), (fx + 4.5, 203), (fx + 2.8, 211), (fx - 2.8, 211)])
    blade = np.array([(fx - 2.8, 211), (fx + 2.8, 211), (fx + 7, 232), (fx, 239), (fx - 7, 232)])
    a, b = cv.mask([blade], blur=0.3)
    cv.fill(a, b, tie)
    X, _ = cv.grid(b)
    stripe = (np.sin((X + cv.grid(b)[1]) * 0.9) > 0.6).astype(np.float32) * a
    cv.mul(stripe, b, 0.7)
    a, b = cv.mask([knot], blur=0.3)
    cv.fill(a, b, tie * 0.9)
    a, b = cv.stroke([np.array([(fx - 2.8, 211.2), (fx + 2.8, 211.2)])], 1, blur=0.5)
    cv.mul(a, b, 0.6)


def _ears(cv: _Canvas, f: _Face) -> None:
    es = f.p.ear_size
    for sd in (-1, 1):
        cx = f.fx + sd * (f.W + 0.5)
        ear = _ellipse_pts(cx, 124, 6.5 * es, 14 * es, angle=sd * 0.12, k=28)
        a, b = cv.mask([ear], blur=0.4)
        side = 1.0 + 0.35 * sd * f.L[0]
        cv.fill(a, b, f.skin * f.tint * (f.amb + f.key * 0.55 * side) * 0.97)
        inner = _ellipse_pts(cx + sd * 1.2, 123, 3.2 * es, 9.5 * es, angle=sd * 0.12, k=20)
        a, b = cv.mask([inner], blur=1.2)
        cv.mul(a, b, 0.78)


def _skin(cv: _Canvas, f: _Face, noise_off) -> None:
    a, b = cv.mask([f.outline], blur=0.35)
    X, Y = cv.grid(b)
    lam, spec = _shade(X, Y, f.fx, f.cy, f.W, f.h_up, f.h_dn, f.L)
    shade = f.amb + f.key * lam
    # shadowed skin is warmer and more saturated (light scattered under the surface)
    warm = _f3((1.0, 0.93, 0.9))
    base = f.skin * f.tint
    col = base[None, None] * shade[..., None]
    col *= 1.0 + (1.0 - lam)[..., None] * (warm - 1.0) * 0.5
    gloss = 0.10 if f.male else 0.08
    col += (_pow(spec, 24) * np.float32(gloss))[..., None]
    blot = _noise(a.shape, int(noise_off[0]), int(noise_off[1]), _NOISE_SOFT)
    col *= (1.0 + blot * np.float32(0.012 + 0.02 * f.old))[..., None]
    cv.fill(a, b, col)
    f.skin_box = b


def _face_shading(cv: _Canvas, f: _Face) -> None:
    """Eye sockets, nose, cheeks, smile lines, wrinkles, blush: soft multiplicative layers."""
    a, p = f.a, f.p
    Lx, Ly = f.L[0], f.L[1]
    sgn = -1.0 if Lx > 0 else 1.0  # the side of the nose turned away from the light
    for e in f.eyes:
        m, b = cv.mask([_ellipse_pts(e[0], e[1] - 2.5, 12.5, 8.5, k=24)], blur=3.0)
        cv.mul(m, b, 0.86 - 0.06 * max(-Ly, 0))
    # cheekbone highlights, raised by a smile
    lift = max(f.s, 0.0)
    for sd in (-1, 1):
        e = f.eyes[0 if sd < 0 else 1]
        c = (e[0] + sd * 4, e[1] + 17 - 3 * lift)
        m, b = cv.mask([_ellipse_pts(c[0], c[1], 10, 7, k=20)], blur=3.5)
        cv.mul(m, b, 1.04 + 0.05 * lift + 0.05 * sd * Lx)
    # nose
    nx, ny, nw = f.nx, f.ny, f.nose_w
    side = np.array(
        [(nx + sgn * 2.2, _EY + 2), (nx + sgn * 4.6, _EY + 2),
         (nx + sgn * nw * 0.95, ny - 1), (nx + sgn * nw * 0.35, ny - 2)]
    )  # fmt: skip
    m, b = cv.mask([side], blur=1.8)
    cv.mul(m, b, 0.90 - 0.16 * abs(Lx) * f.key)
    ridge = np.array([(nx - sgn * 1.0, _EY + 5), (nx - sgn * 0.6, ny - 3)])
    m, b = cv.stroke([ridge], 2, blur=1.0)
    cv.mul(m, b, 1.06)
    m, b = cv.mask([_ellipse_pts(nx, ny + 4.0, nw * 0.85, 2.6, k=20)], blur=1.8)
    cv.mul(m, b, 0.80 - 0.1 * max(-Ly, 0))
    m, b = cv.mask([_ellipse_pts(nx - sgn * 0.8, ny - 1.5, 3.2, 2.6, k=16)], blur=1.3)
    cv.mul(m, b, 1.10)
    nost = [_ellipse_pts(nx + sd * nw * 0.42, ny + 2.4, nw * 0.26, 1.25, angle=-sd * 0.3, k=14)
            for sd in (-1, 1)]  # fmt: skip
    m, b = cv.mask(nost, blur=0.6)
    cv.mul(m, b, 0.42)
    alae = [_quad((nx + sd * nw * 0.55, ny - 3.8), (nx + sd * nw * 1.25, ny + 0.5),
                  (nx + sd * nw * 0.45, ny + 3.2), 8) for sd in (-1, 1)]  # fmt: skip
    m, b = cv.stroke(alae, 1, blur=0.6)
    cv.mul(m, b, 0.70)
    # smile lines (nasolabial folds): deeper with a smile and with age
    depth = 0.06 + 0.22 * lift + 0.22 * f.old
    folds = [_quad((nx + sd * (nw + 1.5), ny - 1), (nx + sd * (nw + 8), (ny + f.my) / 2 - 1),
                   (f.mx + sd * (f.mw + 3.5), f.my + 3), 10) for sd in (-1, 1)]  # fmt: skip
    m, b = cv.stroke(folds, 1, blur=1.0)
    cv.mul(m, b, 1 - depth)
    m, b = cv.stroke([fo + (sgn * 1.8, 0) for fo in folds], 1, blur=1.4)
    cv.mul(m, b, 1 + depth * 0.3)
    if f.old > 0:
        k = f.old
        lines = []
        for i in range(3):
            y = _EY - 26 - 6 * i
            half = 14 + 4 * i
            lines.append(_quad((_FX - half, y + 1.5), (_FX, y - 2), (_FX + half, y + 1.5), 9))
        for sd, e in zip((-1, 1), f.eyes):
            o = (e[0] + sd * (p.eye_w + 2.5), e[1])
            for ang in (-0.45, 0.0, 0.45):
                d = (sd * math.cos(ang), math.sin(ang))
                lines.append(np.array([o, (o[0] + 5 * d[0], o[1] + 5 * d[1])]))
            lines.append(np.array([(f.mx + sd * (f.mw + 1), f.my + 2),
                                   (f.mx + sd * (f.mw + 3), f.my + 13)]))  # fmt: skip
        m, b = cv.stroke(lines, 1, blur=0.55)
        cv.mul(m, b, 1 - 0.22 * k)
        m, b = cv.stroke([ln + (0, 1.3) for ln in lines], 1, blur=0.8)
        cv.mul(m, b, 1 + 0.05 * k)
    if a["Bags_Under_Eyes"]:
        bags = []
        for e in f.eyes:
            t = np.linspace(-1, 1, 9)
            lo = np.stack([e[0] + p.eye_w * 0.9 * t, e[1] + 3.2 + 1.5 * (1 - t * t)], 1)
            hi = np.stack([e[0] + p.eye_w * 0.9 * t, e[1] + 3.2 + 5.0 * (1 - t * t)], 1)
            bags.append(np.vstack([lo, hi[::-1]]))
        m, b = cv.mask(bags, blur=1.2)
        cv.mul(m, b, _f3((0.80, 0.76, 0.80)))
        m, b = cv.stroke([bg[9:] for bg in bags], 1, blur=0.6)
        cv.mul(m, b, 0.85)
    cheeks = [_ellipse_pts(e[0] + sd * 3, e[1] + 19 - 2 * lift, 9.5, 6.5, k=20)
              for sd, e in zip((-1, 1), f.eyes)]  # fmt: skip
    if a["Rosy_Cheeks"]:
        m, b = cv.mask(cheeks, blur=3.5)
        cv.fill(m, b, _f3((0.88, 0.28, 0.32)) * f.lit * 1.1, 0.42)
    elif a["Heavy_Makeup"]:
        m, b = cv.mask(cheeks, blur=4.0)
        cv.fill(m, b, _f3((0.85, 0.42, 0.42)) * f.lit, 0.12)


def _beard(cv: _Canvas, f: _Face, noise_off) -> None:
    a, p = f.a, f.p
    full = not a["No_Beard"] and (p.beard_full or not (a["Goatee"] or a["Mustache"]))
    stubble, goatee, tache = a["5_o_Clock_Shadow"], a["Goatee"], a["Mustache"]
    sideburns = a["Sideburns"]
    if not (full or stubble or goatee or tache or sideburns):
        return
    fx, W, mx, my, mw = f.fx, f.W, f.mx, f.my, f.mw
    beard_col = f.hair if f.hairy else _brow_rgb(p, f.hair)
    beard_col = beard_col * 0.85 * f.tint * f.lit
    top_y = f.ny + 4.8

    def region(vol):
        # cheeks and jaw below a line from the sideburns to the corners of the nose
        upper = np.array(
            [(fx - W + 1.5, f.cy - 8), (fx - W + 7, f.cy + 3), (mx - mw - 9, f.ny + 3),
             (mx - mw - 3, my - 7), (mx - 6, top_y), (mx + 6, top_y), (mx + mw + 3, my - 7),
             (mx + mw + 9, f.ny + 3), (fx + W - 7, f.cy + 3), (fx + W - 1.5, f.cy - 8)]
        )  # fmt: skip
        lower = f.contour(np.linspace(-0.14, math.pi + 0.14, 30), grow=vol)
        return np.vstack([upper, lower])

    def paint(polys, density, blur, tex_gain, col):
        m, b = cv.mask(polys, blur=blur)
        if m is None:
            return
        tex = _noise(m.shape, int(noise_off[2]), int(noise_off[3]), _STREAK)
        alpha = m * np.clip(density * (0.85 + tex_gain * tex), 0, 1)
        cv.fill(alpha, b, col[None, None] * (1 + 0.25 * tex)[..., None])

    if stubble or full:
        base = region(0.0)
        m, b = cv.mask([base], blur=2.0)
        speck = _noise(m.shape, int(noise_off[4]), int(noise_off[5]))
        dots = np.clip(speck - 0.8, 0, 1.0)
        stub_col = _lerp(beard_col, (0.20, 0.21, 0.24), 0.6) * f.lit
        cv.fill(m * np.clip(0.26 + 0.3 * dots, 0, 1), b, stub_col)
    if full:
        vol = 2.5 + 3 * p.beard_density
        paint([region(vol)], 0.92 * p.beard_density, 1.5, 0.25, beard_col)
    if goatee:
        g = np.array(
            [(mx - mw + 1, my + 3), (mx - mw + 2.5, f.chin_y - 8), (mx - 6, f.chin_y + 1.5),
             (mx + 6, f.chin_y + 1.5), (mx + mw - 2.5, f.chin_y - 8), (mx + mw - 1, my + 3),
             (mx + 3, my + 5.5), (mx - 3, my + 5.5)]
        )  # fmt: skip
        paint([g], 0.95, 1.1, 0.25, beard_col)
    if tache and not full:
        t = np.array(
            [(mx - mw - 2.5, my + 3), (mx - mw + 1, my - 4.5), (mx - 4, top_y),
             (mx, top_y + 0.6), (mx + 4, top_y), (mx + mw - 1, my - 4.5), (mx + mw + 2.5, my + 3),
             (mx + mw - 2, my - 1), (mx, my - 2), (mx - mw + 2, my - 1)]
        )  # fmt: skip
        paint([t], 0.95, 0.9, 0.25, beard_col)
    if sideburns:
        sb = [np.array([(fx + sd * (W - 0.5), _EY - 12), (fx + sd * (W - 5), _EY - 12),
                        (fx + sd * (W - 4.5), f.cy + 7), (fx + sd * (W - 1.0), f.cy + 9)])
              for sd in (-1, 1)]  # fmt: skip
        paint(sb, 0.9, 0.9, 0.25, beard_col)


def _eyes(cv: _Canvas, f: _Face, noise_off) -> None:
    a, p = f.a, f.p
    lift = max(f.s, 0.0)
    eo = f.eye_open * (1 - 0.22 * lift)
    ew = p.eye_w
    hair = f.hair
    brow_col = _brow_rgb(p, hair) * f.tint * (0.75 + 0.35 * f.lit)
    makeup = a["Heavy_Makeup"]
    t = np.linspace(-1, 1, 15)
    for sd, e in zip((-1, 1), f.eyes):
        ex, ey = float(e[0]), float(e[1])
        # t runs inner corner (-1) to outer corner (+1) along x
        x = ex + sd * ew * t
        up = ey - eo * (1 - t * t) ** 0.8 - 0.5 * (t + 1) * (0.3 if f.male else 0.8) + 0.4
        lo = ey + eo * (0.55 - 0.2 * lift) * (1 - t * t) ** 0.9 + 0.3 * (1 - t) * 0.5
        upper, lower = np.stack([x, up], 1), np.stack([x, lo], 1)
        almond = np.vstack([upper, lower[::-1]])
        # eyeshadow and the lid crease first, on the skin
        crease = np.stack([x[2:-1], up[2:-1] - 2.8 - 0.6 * (1 - t[2:-1] ** 2)], 1)
        if makeup:
            hi = np.stack([x, up - 5.5 * (1 - t * t) ** 0.5 - 0.6], 1)
            m, b = cv.mask([np.vstack([upper, hi[::-1]])], blur=1.6)
            cv.fill(m, b, _f3(p.eyeshadow_rgb) * f.lit, 0.55)
        m, b = cv.stroke([crease], 1, blur=0.6)
        cv.mul(m, b, 0.78)
        m, b = cv.mask([almond], blur=0.3, pad=3)
        X, Y = cv.grid(b)
        ix, iy = ex + p.gaze[0], ey + p.gaze[1] - 0.2
        r_iris = min(4.4, ew * 0.5)
        d = np.sqrt((X - ix) ** 2 + (Y - iy) ** 2) * np.float32(1 / r_iris)
        sclera = _f3((0.93, 0.91, 0.88)) * f.lit * f.tint
        iris = _f3(p.eye_rgb) * f.lit * 1.2
        col = np.empty(m.shape + (3,), np.float32)
        col[:] = sclera
        shade_in = np.clip((Y - (ey - eo)) / (2 * eo + 0.1), 0, 1)
        col *= (0.72 + 0.28 * shade_in)[..., None]
        ir = np.clip((1.0 - d) * r_iris * 1.6, 0, 1)  # anti-aliased iris disc
        icol = iris[None, None] * (1.2 - 0.6 * d * d)[..., None]
        icol *= (1 - 0.55 * np.clip((d - 0.78) * 5, 0, 1))[..., None]
        pupil = np.clip((0.40 - d) * r_iris * 1.6, 0, 1)
        icol += (0.03 - icol) * pupil[..., None]
        col += (icol - col) * ir[..., None]
        cv.fill(m, b, col)
        # lid shadow on the eyeball, then a catch-light
        m2, _ = cv.stroke([upper + (0, 1.2)], 2, blur=1.0, box=b)
        cv.mul(m2 * m, b, 0.7)
        cl = (ix - 1.4 * np.sign(f.L[0] or 1) * -1, iy - 1.5)
        m3, b3 = cv.mask([_ellipse_pts(cl[0], cl[1], 0.9, 0.9, k=10)], blur=0.3)
        cv.fill(m3, b3, (1, 1, 1), 0.85)
        # upper lid line with lashes (thicker for women and with make-up), lower lid line
        lid_w = 2 if (not f.male or makeup) else 1
        lines = [upper]
        if makeup:
            wing = np.array([upper[-1], (upper[-1][0] + sd * 3.0, upper[-1][1] - 2.2)])
            lines.append(wing)
        m, b = cv.stroke(lines, lid_w, blur=0.35)
        cv.fill(m, b, _f3((0.06, 0.04, 0.04)), 0.9)
        if not f.male:
            lash = [np.array([upper[i], (upper[i][0] + sd * 1.8, upper[i][1] - 1.8)])
                    for i in range(7, 15, 2)]  # fmt: skip
            m, b = cv.stroke(lash, 1, blur=0.3)
            cv.fill(m, b, _f3((0.05, 0.04, 0.04)), 0.7)
        m, b = cv.stroke([lower[1:-1]], 1, blur=0.5)
        cv.mul(m, b, 0.82)
        # eyebrow
        bt = np.linspace(0, 1, 11)
        arch = 2.0 + (2.4 if a["Arched_Eyebrows"] else 0.0) - 0.6 * f.old
        bx = ex + sd * (-ew - 1.5 + (2 * ew + 6.0) * bt)
        by = ey - p.brow_lift + 1.2 - arch * np.sin(np.pi * np.clip(bt * 1.25, 0, 1) ** 0.9)
        by += (0.8 + 1.6 * f.old) * bt - 0.6 * lift
        if a["Arched_Eyebrows"]:
            by += 1.2 * np.clip(bt - 0.7, 0, 1) * 6
        th = f.brow_thick * (1.0 - 0.6 * bt**1.5)
        top = np.stack([bx, by - 0.6 * th], 1)
        bot = np.stack([bx, by + 0.4 * th], 1)
        bushy = a["Bushy_Eyebrows"]
        m, b = cv.mask([np.vstack([top, bot[::-1]])], blur=0.9 if bushy else 0.5)
        tex = _noise(m.shape, int(noise_off[0]) + 7 * sd, int(noise_off[2]), _STREAK)
        alpha = m * np.clip(0.88 + 0.2 * tex, 0, 1)
        cv.fill(alpha, b, brow_col)


def _mouth(cv: _Canvas, f: _Face) -> None:
    a, p = f.a, f.p
    s, g, w = f.s, f.gap, f.mw
    mx, my = f.mx, f.my
    t = np.linspace(-1, 1, 21)
    x = mx + w * t
    q = 1 - t * t
    part = my + 5.2 * s * q
    ub = part - g * 0.3 * q**0.5
    lt = part + g * 0.7 * q**0.5
    tu = f.lip_h * (1 - 0.3 * max(s, 0)) * 0.85
    tl = f.lip_h * (1 - 0.15 * max(s, 0)) * 1.15
    bow = 0.9 * np.exp(-(((np.abs(t) - 0.28) / 0.14) ** 2)) - 0.7 * np.exp(-((t / 0.09) ** 2))
    ut = ub - tu * q**0.45 - bow * tu / 3.5
    lb = lt + tl * q**0.55
    P = lambda y: np.stack([x, y], 1)  # noqa: E731
    lipstick = a["Wearing_Lipstick"]
    natural = f.skin * _f3((0.86, 0.62, 0.60)) * (0.92 if f.skin.mean() > 0.5 else 0.85)
    lip = _f3(p.lipstick_rgb) if lipstick else natural
    lip = lip * f.tint * f.lit * 1.05
    # a soft shadow under the lower lip
    m, b = cv.mask([_ellipse_pts(mx, lb[10] + 2.8, w * 0.55, 2.4, k=20)], blur=1.6)
    cv.mul(m, b, 0.84)
    if g > 0:
        inner = np.vstack([P(ub), P(lt)[::-1]])
        m, b = cv.mask([inner], blur=0.35)
        cv.fill(m, b, _f3((0.13, 0.035, 0.035)) * f.lit)
        teeth_h = min(g * 0.9, 2.8 + 2.4 * max(s, 0)) if s > 0.2 else min(g * 0.3, 1.4)
        tm, _ = cv.mask([np.vstack([P(ub - 1), P(ub + teeth_h * q**0.25)[::-1]])], box=b)
        X, _ = cv.grid(b)
        fall = np.clip(1.0 - 0.7 * ((X - mx) / w) ** 2, 0.2, 1)
        teeth = _f3((0.94, 0.92, 0.86)) * f.lit * f.tint
        cv.fill(tm * m * fall, b, teeth)
        if s > 0.3 and g > 4.5:
            lm, _ = cv.mask([np.vstack([P(lt - 1.6 * q**0.3), P(lt + 1)[::-1]])], box=b)
            cv.fill(lm * m * fall, b, teeth * 0.85)
    upper = np.vstack([P(ut), P(ub)[::-1]])
    lower = np.vstack([P(lt), P(lb)[::-1]])
    m, b = cv.mask([upper], blur=0.45)
    cv.fill(m, b, lip * 0.80, 0.97 if lipstick else 0.85)
    m, b = cv.mask([lower], blur=0.45)
    cv.fill(m, b, lip, 0.97 if lipstick else 0.85)
    hl = _ellipse_pts(mx - 1, lt[10] + 0.6 * (lb[10] - lt[10]), w * 0.25, 0.8, k=16)
    m, b = cv.mask([hl], blur=0.9)
    cv.fill(m, b, (1, 1, 1), 0.22 if lipstick else 0.12)
    m, b = cv.stroke([P(part if g == 0 else ub)], 1, blur=0.4)
    cv.mul(m, b, 0.45)
    corners = [_ellipse_pts(mx + sd * (w + 0.3), my - 0.2, 1.4, 1.1, k=10) for sd in (-1, 1)]
    m, b = cv.mask(corners, blur=0.8)
    cv.mul(m, b, 0.70)


def _hair_front(cv: _Canvas, f: _Face, r: np.ndarray) -> None:
    if not f.hairy or f.p.hair_style == "bald":
        return
    a, p, style = f.a, f.p, f.p.hair_style
    rx, ry = _hair_geometry(f)
    fx, W = f.fx, f.W
    wavy = a["Wavy_Hair"]
    hl = p.hairline
    wt = W * 0.80  # temple half-width
    recede = 12.0 if a["Receding_Hairline"] else 3.0
    side_end = {"short": 113, "buzz": 109, "medium": 128, "pixie": 124, "updo": 112}.get(style)
    if style == "long":
        side_end = p.hair_len
    elif style == "bob":
        side_end = 168 + 0.35 * (p.hair_len - 195)

    def inner_x(y):  # how far the side hair reaches onto the face
        if style in ("long", "bob"):
            cover = 5.5 + 2 * math.sin(3 * p.hair_part)
            if y > f.chin_y - 8:
                return max(f.nw + 3, f.face_x(min(y, f.chin_y - 8)) - cover)
            return max(f.face_x(y) - cover, 4)
        if style in ("medium", "pixie"):
            return f.face_x(y) - 1.5
        return f.face_x(y) + 0.5

    def outer_x(y):
        if style in ("short", "buzz", "pixie", "medium", "updo"):
            # close-cut sides: the silhouette tapers into the face edge at the sideburn
            rr = (f.cy - y) / ry
            full = rx * math.sqrt(max(1 - rr * rr, 0))
            start = side_end - (22 if style in ("medium", "pixie") else 30)
            k = float(np.clip((y - start) / (side_end - start), 0, 1))
            return full + (f.face_x(y) + 1.0 - full) * k * k
        if y <= f.cy:
            rr = (f.cy - y) / ry
            return rx * math.sqrt(max(1 - rr * rr, 0))
        if style == "long":
            return rx + 0.16 * (y - f.cy) + (1.5 * math.sin(0.25 * y) if wavy else 0)
        if style == "bob":
            k = (y - f.cy) / max(side_end - f.cy, 1)
            return rx + 3 * math.sin(math.pi * min(k, 1)) - 4 * max(k - 0.8, 0) * 5
        return rx

    # hairline (or fringe) across the forehead, temple to temple
    xs = np.linspace(-wt, wt, 25)
    if a["Bangs"]:
        # a fringe ending in clumps of strand tips just above the brows
        fy = _EY - p.brow_lift - 4.0
        tilt = 5.0 * p.hair_part
        cuts = np.sort(r[80:88, 0]) * 2 - 1
        u = (xs / wt + 1) / 2
        k = np.searchsorted(cuts, xs / wt)
        lo = np.concatenate([[-1.0], cuts])[k]
        hi = np.concatenate([cuts, [1.0]])[k]
        frac = np.clip((xs / wt - lo) / np.maximum(hi - lo, 1e-3), 0, 1)
        tips = 2.8 * (1 - np.abs(2 * frac - 1) ** 1.5) * (0.6 + 0.4 * r[80 + k % 8, 1])
        edge = fy - tilt * (2 * u - 1) + tips - 3.0 * (xs / wt) ** 4
        front = np.stack([fx + xs, edge], 1)
    else:
        edge = hl + recede * (xs / wt) ** 2
        if a["Receding_Hairline"]:
            edge = hl - 4 + recede * (np.abs(xs) / wt) ** 1.5 + 3.5 * np.exp(-((xs / 7) ** 2))
        front = np.stack([fx + xs, edge], 1)
    t_y = float(front[-1, 1])
    ys_side = np.linspace(t_y + 1, side_end, 12)
    right_in = np.array([(fx + inner_x(y), y) for y in ys_side])
    left_in = np.array([(fx - inner_x(y), y) for y in ys_side])
    ys_out = np.linspace(f.top - p.hair_vol, side_end, 40)
    ys_out = ys_out[ys_out >= f.cy - ry + 0.5]
    right_out = np.array([(fx + outer_x(y), y) for y in ys_out])
    left_out = np.array([(fx - outer_x(y), y) for y in ys_out])
    # closed outline: over the top from the left, down the right side, up the right inner edge,
    # across the front, down the left inner edge, back up the left side
    poly = np.vstack([left_out[::-1], right_out, right_in[::-1], front[::-1], left_in])
    a_h, b = cv.mask([poly], blur=0.8)
    count = 26 if style in ("short", "buzz") else 48
    end = side_end if style in ("long", "bob") else 0
    dark_l, light_l = _strands(f, r, end, wavy, count)
    if a["Bangs"]:
        fr = []
        xf = np.sort(r[60:78, 0]) * 2 * wt - wt
        for i, x0 in enumerate(xf):
            y_bot = float(np.interp(x0, xs, edge)) + 1
            y_top = hl - 8
            sweep = 8 * p.hair_part
            fr.append(_quad((fx + x0 + sweep, y_top), (fx + x0 + sweep * 0.3, y_bot - 8),
                            (fx + x0 + 1.5 * (r[60 + i, 1] - 0.5), y_bot), 6))  # fmt: skip
        dark_l = dark_l + fr[0::3] + fr[1::3]
        light_l = light_l + fr[2::3]
    if style == "buzz":
        X, Y = cv.grid(b)
        speck = _noise(a_h.shape, int(r[0, 0] * 300), int(r[0, 1] * 300))
        a_h = a_h * np.clip(0.55 + 0.2 * speck, 0, 1)
        _hair_layer(cv, f, a_h, b, None)
    else:
        _hair_layer(cv, f, a_h, b, (dark_l, light_l))
    if not a["Bangs"] and style in ("long", "bob", "medium") and abs(p.hair_part) > 0.15:
        px = fx + 0.35 * p.hair_part * rx
        y0 = float(np.interp(px - fx, xs, edge))
        partline = _quad((px, y0 + 1), (px + 1, y0 - 12), (px + 4 * p.hair_part, f.top - 4), 8)
        m, bb = cv.stroke([partline], 1, blur=0.5)
        cv.fill(m, bb, f.skin * f.lit, 0.35)


def _hat(cv: _Canvas, f: _Face, r: np.ndarray) -> None:
    """A beanie, a cap or a wide-brimmed hat, hugging the head (hair included) down to ``band``."""
    p = f.p
    fx, W = f.fx, f.W
    rx, ry = _hair_geometry(f)
    style = p.hat_style
    band = 72.0 + 6 * r[3]  # where the hat meets the forehead
    col = _f3(p.hat_rgb) * f.tint
    hx, hy = rx + 2.5, ry + (6.0 if style == 0 else 3.0)

    def half_width(y):
        return hx * math.sqrt(max(1 - ((y - f.cy) / hy) ** 2, 0.0))

    # the hat's shadow on the forehead
    sh = np.array(
        [(fx - W, band - 2), (fx + W, band - 2), (fx + W, band + 10), (fx - W, band + 10)]
    )
    m, b = cv.mask([sh], blur=3.0)
    cv.mul(m, b, 0.55 if style else 0.8)
    if style == 2:  # the brim first: the crown hides its far half
        brim = _ellipse_pts(fx, band - 1, W + 24, 8.5, k=48)
        m, b = cv.mask([brim], blur=0.4)
        X, Y = cv.grid(b)
        lam, _ = _shade(X, Y, fx, band - 8, W + 24, 12, 12, f.L)
        cv.fill(m, b, col[None, None] * (f.amb + f.key * lam)[..., None])
    a0 = math.asin(min((f.cy - band) / hy, 1.0))
    crown = _arc(fx, f.cy, hx, hy, math.pi + a0, 2 * math.pi - a0, 32)
    if style == 2:  # a taller crown with a flat top
        crown[:, 1] = np.maximum(crown[:, 1] - 10, f.top - p.hair_vol - 4)
        crown[:, 0] = fx + (crown[:, 0] - fx) * 0.86
    hw = abs(crown[-1, 0] - fx)
    xs = np.linspace(1, -1, 13)
    edge = np.stack([fx + hw * xs, band + 2.5 * (1 - xs**2)], 1)
    m, b = cv.mask([np.vstack([crown, edge])], blur=0.4)
    X, Y = cv.grid(b)
    lam, spec = _shade(X, Y, fx, f.cy, hx, hy, None, f.L, flat=0.9)
    tex = 1.0 + (0.08 * np.sin(X * 1.6) if style == 0 else 0.0)  # a beanie's ribs
    layer = col[None, None] * ((f.amb + f.key * lam) * tex)[..., None]
    layer += (_pow(spec, 20) * np.float32(0.10))[..., None]
    cv.fill(m, b, layer)
    if style == 0:  # the folded cuff of a beanie
        top_w, bot_w = half_width(band - 10) + 1, half_width(band) + 1.5
        curve = 2.5 * (1 - xs**2)
        cuff = np.vstack([np.stack([fx - top_w * xs, band - 10 + curve], 1),
                          np.stack([fx + bot_w * xs, band + 3 + curve], 1)])  # fmt: skip
        m, b = cv.mask([cuff], blur=0.4)
        X, _ = cv.grid(b)
        rib = 1.0 - 0.12 * (np.sin(X * 1.4) > 0)
        cv.fill(m, b, col[None, None] * (0.85 * (f.amb + f.key * 0.7) * rib)[..., None])
    elif style == 1:  # a cap's peak, sticking out over the forehead
        pk = _ellipse_pts(fx + 0.6 * p.yaw, band + 1, W * 0.82, 8.0, k=40)
        pk = pk[pk[:, 1] >= band - 0.5]
        pk = pk[np.argsort(-np.arctan2(pk[:, 1] - band, pk[:, 0] - fx))]
        m, b = cv.mask([pk], blur=0.4)
        cv.fill(m, b, col * 0.8 * (f.amb + f.key * 0.75))
        m, b = cv.stroke([pk], 1, blur=0.5)
        cv.mul(m, b, 0.75)
    else:  # a ribbon round the crown of a wide-brimmed hat
        rib = np.vstack([np.stack([fx - hw * xs, band - 7 + 2.5 * (1 - xs**2)], 1), edge])
        m, b = cv.mask([rib], blur=0.3)
        cv.fill(m, b, _f3(p.tie_rgb) * 0.6 * f.lit)


def _glasses(cv: _Canvas, f: _Face) -> None:
    p = f.p
    style = p.glasses_style
    gw = p.eye_w + 4.5
    gh = (8.0, 7.0, 8.0, 7.5)[style]
    n = (2.0, 4.0, 2.6, 3.0)[style]
    thick = 1 if style == 2 else 2
    frame = _f3(p.glasses_rgb) * f.lit * 1.1
    lenses = []
    for sd, e in zip((-1, 1), f.eyes):
        pts = _ellipse_pts(e[0] + sd * 0.8, e[1] + 0.5, gw, gh, k=40, n=n)
        if style == 3:  # cat-eye: outer upper corners swept up
            dx = (pts[:, 0] - e[0]) * sd / gw
            pts[:, 1] -= 2.8 * np.clip(dx, 0, 1) ** 2 * (pts[:, 1] < e[1])
        lenses.append(pts)
    bridge = _quad(
        (f.eyes[0][0] + gw - 0.5, _EY - 1.5),
        (_FX, _EY - 5),
        (f.eyes[1][0] - gw + 0.5, _EY - 1.5),
        8,
    )
    temples = [
        np.array([(f.eyes[0][0] - gw - 0.5, _EY - 2.5), (f.fx - f.W - 1, _EY)]),
        np.array([(f.eyes[1][0] + gw + 0.5, _EY - 2.5), (f.fx + f.W + 1, _EY)]),
    ]
    # shadow of the frame on the face
    off = np.array([-2.0 * f.L[0], 2.5])
    sh = [ln + off for ln in [*lenses, bridge, *temples]]
    m, b = cv.stroke(sh, thick + 1, blur=1.4)
    cv.mul(m, b, 0.78)
    # lenses: tint (dark for sunglasses) and a reflection band
    m, b = cv.mask(lenses, blur=0.3)
    X, Y = cv.grid(b)
    if p.sunglasses:
        tint = _f3((0.07, 0.07, 0.09)) + _f3(p.glasses_rgb) * 0.15
        cv.fill(m, b, tint, 0.88)
    else:
        cv.fill(m, b, _f3((0.85, 0.92, 0.97)) * f.lit * 1.1, 0.10)
    refl = np.clip(1 - np.abs((X - _FX) * 0.6 + (Y - _EY) * 1.0 + 6) / 3.5, 0, 1)
    refl = np.maximum(refl, np.clip(1 - np.abs((X - _FX) * 0.6 + (Y - _EY) + 30) / 2.5, 0, 1))
    cv.fill(m * refl, b, (1, 1, 1), 0.28 if p.sunglasses else 0.16)
    m, b = cv.stroke([*lenses, bridge, *temples[:0]], thick, closed=False, blur=0.3)
    cv.fill(m, b, frame)
    m, b = cv.stroke([ln for ln in lenses], thick, closed=True, blur=0.3)
    cv.fill(m, b, frame)
    m, b = cv.stroke(temples, thick, blur=0.3)
    cv.fill(m, b, frame * 0.9)


def _earrings(cv: _Canvas, f: _Face) -> None:
    p = f.p
    es = p.ear_size
    jewel = _f3(p.jewel_rgb) * f.lit * 1.25
    for sd in (-1, 1):
        x, y = f.fx + sd * (f.W + 1.0), 124 + 12.5 * es
        if p.earring_style == 0:
            m, b = cv.mask([_ellipse_pts(x, y, 2.0, 2.0, k=14)], blur=0.3)
            cv.fill(m, b, jewel)
        elif p.earring_style == 1:
            m, b = cv.stroke([_ellipse_pts(x, y + 5.5, 4.5, 5.5, k=24)], 1, closed=True, blur=0.2)
            cv.fill(m, b, jewel)
        else:
            m, b = cv.stroke([np.array([(x, y), (x, y + 6)])], 1, blur=0.2)
            cv.fill(m, b, jewel)
            m, b = cv.mask([_ellipse_pts(x, y + 8.5, 2.2, 3.0, k=14)], blur=0.3)
            cv.fill(m, b, jewel)
        m, b = cv.mask([_ellipse_pts(x - 0.6, y - 0.6, 0.7, 0.7, k=8)], blur=0.3)
        cv.fill(m, b, (1, 1, 1), 0.8)


# ---------------------------------------------------------------------------------------------
# a labelled contact sheet, to check by eye that the faces show their labels


def label_grid(seed: int = 0, count: int = 64, cols: int = 8, n: int = 20000, font_size: int = 11):
    """A PIL image of the first ``count`` faces of the ``(seed, n)`` set, each with its positive
    rendered labels written under it (and ``No_Beard=-1`` where a beard is drawn)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=font_size)
    line_h = font_size + 2
    text_lines = 6
    cell_w, cell_h = _IMG_W + 6, _IMG_H + 6 + text_lines * line_h
    rows = math.ceil(count / cols)
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(count):
        p = sample_params(seed, i, n)
        img, _ = render_face(p)
        x, y = (i % cols) * cell_w + 3, (i // cols) * cell_h + 3
        sheet.paste(Image.fromarray(img), (x, y))
        words = [a for a in RENDERED_ATTRIBUTES if p.attrs[a] and a != "No_Beard"]
        if not p.attrs["No_Beard"]:
            words.append("No_Beard=-1")
        lines, cur = [], f"{i + 1:06d}.jpg id {p.identity}:"
        for w in words:
            if draw.textlength(cur + " " + w, font=font) > _IMG_W:
                lines.append(cur)
                cur = w
            else:
                cur = cur + " " + w
        lines.append(cur)
        for k, line in enumerate(lines[:text_lines]):
            draw.text((x, y + _IMG_H + 2 + k * line_h), line, fill=(0, 0, 0), font=font)
    return sheet


# ---------------------------------------------------------------------------------------------
# writing a set in CelebA's official layout

IMAGE_DIR = "img_align_celeba"
_LANDMARK_HEADER = " ".join(f"{p}_{c}" for p in LANDMARK_NAMES for c in ("x", "y")) + " "

_HOW: dict[str, str] = {
    "5_o_Clock_Shadow": "a faint grey-blue stubble shadow with fine dots over cheeks, jaw and "
    "upper lip (men without a beard, on some days)",
    "Arched_Eyebrows": "brows with a high arch and a dropping outer end",
    "Bags_Under_Eyes": "dark crescents and a crease under each eye",
    "Bald": "no hair on the scalp, which shows a highlight (men, mostly older)",
    "Bangs": "a fringe over the forehead ending in strand tips just above the brows",
    "Big_Lips": "lips about 45% thicker",
    "Big_Nose": "a wider nose with bigger nostrils, reaching lower",
    "Black_Hair": "near-black hair",
    "Blond_Hair": "golden to platinum hair",
    "Blurry": "the whole image Gaussian-blurred (sigma 1.6 to 2.8 px)",
    "Brown_Hair": "medium to dark brown hair",
    "Bushy_Eyebrows": "thick brows with fuzzy edges",
    "Chubby": "a wider, rounder face and a thicker neck",
    "Double_Chin": "a second, shaded chin below the jaw line",
    "Eyeglasses": "frames (round, rectangular, thin metal or cat-eye) with bridge, temples, a "
    "cast shadow and a reflection; about one pair in five are dark sunglasses",
    "Goatee": "hair on the chin and round the mouth",
    "Gray_Hair": "grey to white hair",
    "Heavy_Makeup": "coloured eyeshadow, eyeliner with a wing, a touch of blush (always with "
    "lipstick)",
    "Male": "a squarer and wider jaw, thicker brows and neck, no eyelashes drawn, mostly short "
    "hair",
    "Mouth_Slightly_Open": "a dark gap between the lips (4 to 8 px) with the edge of the upper "
    "teeth; with a smile, a band of teeth",
    "Mustache": "hair between the nose and the upper lip",
    "Narrow_Eyes": "eye openings about half as high",
    "No_Beard": "-1 when a full beard, a goatee or a moustache is drawn (men only)",
    "Pale_Skin": "very light, slightly pink skin",
    "Receding_Hairline": "a hairline set back with deep temple recessions",
    "Rosy_Cheeks": "red patches on the cheeks",
    "Sideburns": "strips of hair in front of the ears",
    "Smiling": "mouth corners turned up on a curved mouth, wider mouth, raised cheeks with "
    "highlights, deeper smile lines, slightly narrowed eyes",
    "Straight_Hair": "straight strands and outline",
    "Wavy_Hair": "wavy strands and a wavy outline",
    "Wearing_Earrings": "studs, hoops or drops at the ear lobes",
    "Wearing_Hat": "a beanie, a cap with a peak or a wide-brimmed hat, shading the forehead",
    "Wearing_Lipstick": "red, berry, pink or coral lips with a gloss highlight",
    "Wearing_Necklace": "a gold or silver chain with a pendant",
    "Wearing_Necktie": "a shirt collar, a tie and a dark jacket",
    "Young": "-1 draws forehead lines, crow's feet, deeper smile lines, marionette lines, "
    "lower outer brows and blotchier skin",
}

_CORRELATIONS = """\
- Wearing_Lipstick and Heavy_Makeup almost only on non-Male faces (P(Lipstick | Male) ~ 0.4%);
  Heavy_Makeup only with Wearing_Lipstick (80% of lipstick images).
- Beards (No_Beard -1), Goatee, Mustache, Sideburns, 5_o_Clock_Shadow and Necktie only on Male.
- Gray_Hair mostly on not Young (17% vs 0.4% of people); Bald: men only and mostly not Young
  (18% vs 1.5% of men); Receding_Hairline likewise (35% vs 8% of men, 3% of women).
- Young less frequent among Male (68% vs 84%).
- Smiling more frequent on non-Male (56% vs 39%, plus a per-person bias);
  Mouth_Slightly_Open: 68% of smiling images, 27% of the others.
- Blond_Hair mostly non-Male (26% vs 5% on lighter skin); Black_Hair more Male (30% vs 19%
  on lighter skin) and 72% of darker-skinned people.
- Arched_Eyebrows mostly non-Male, Bushy_Eyebrows and Big_Nose mostly Male;
  Wearing_Earrings and Wearing_Necklace only on non-Male.
- Bags_Under_Eyes, Chubby and Double_Chin more frequent on not Young.
- Eyeglasses and Wearing_Hat come from per-person habits (a wearer wears them on about half
  of their images), so they cluster by identity.
"""


def _chunk_task(args):
    seed, n, start, stop, img_dir, quality = args
    labels = np.empty((stop - start, len(CELEBA_ATTRIBUTES)), np.int8)
    marks = np.empty((stop - start, 5, 2), np.float32)
    boxes = np.empty((stop - start, 4), np.int32)
    enc = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    for k, i in enumerate(range(start, stop)):
        p = sample_params(seed, i, n)
        img, lm, box = _render(p)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), enc)
        if not ok:  # pragma: no cover - OpenCV failing to encode a plain uint8 image
            raise RuntimeError(f"JPEG encoding failed for image {i + 1}")
        with open(os.path.join(img_dir, f"{i + 1:06d}.jpg"), "wb") as fh:
            fh.write(buf.tobytes())
        labels[k], marks[k], boxes[k] = p.labels, lm, box
    return start, labels, marks, boxes


def _init_worker() -> None:
    cv2.setNumThreads(1)


def write_synthfaces(
    out: str | os.PathLike,
    n: int = 20000,
    seed: int = 0,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    quality: int = 90,
) -> dict:
    """Render ``n`` SynthFaces into ``out`` in CelebA's official layout, atomically.

    Writes ``img_align_celeba/000001.jpg`` ... (178 x 218 JPEGs), ``list_attr_celeba.txt``,
    ``list_eval_partition.txt``, ``identity_CelebA.txt``, ``list_landmarks_align_celeba.txt``,
    ``list_bbox_celeba.txt`` (CRLF text, CelebA's exact formatting) and a ``README.md``.
    The folder is built in a hidden staging sibling and moved into place when complete; an
    existing non-empty ``out`` is refused with :class:`~conceptvae.errors.OutputError` unless
    ``force``. The bytes depend only on ``(n, seed, quality)``, not on ``workers``.

    Returns a summary: ``n``, ``seed``, ``workers``, ``seconds``, ``images_per_s``, ``out``.
    """
    _check_seed_n(seed, n)
    if not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers!r}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be a JPEG quality from 1 to 100, got {quality!r}")
    n, seed, workers = int(n), int(seed), int(workers)
    t0 = time.perf_counter()
    labels = np.empty((n, len(CELEBA_ATTRIBUTES)), np.int8)
    marks = np.empty((n, 5, 2), np.float32)
    boxes = np.empty((n, 4), np.int32)
    chunk = int(np.clip(n // (workers * 8), 8, 200))
    with staged_dir(out, force) as stage:
        img_dir = stage / IMAGE_DIR
        img_dir.mkdir()
        tasks = [(seed, n, s, min(s + chunk, n), str(img_dir), quality) for s in range(0, n, chunk)]
        bar = _progress_bar(n, progress)
        try:
            if workers == 1:
                results = map(_chunk_task, tasks)
                _collect(results, labels, marks, boxes, bar)
            else:
                # an executor rather than a Pool, so that a worker that dies raises instead
                # of hanging
                with worker_pool(min(workers, len(tasks)), _init_worker) as pool:
                    futures = [pool.submit(_chunk_task, t) for t in tasks]
                    _collect((fu.result() for fu in as_completed(futures)), labels, marks,
                             boxes, bar)  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
        _write_metadata(stage, seed, n, quality, labels, marks, boxes)
    seconds = time.perf_counter() - t0
    return {
        "n": n,
        "seed": seed,
        "workers": workers,
        "seconds": seconds,
        "images_per_s": n / max(seconds, 1e-9),
        "out": str(Path(out)),
    }


def _progress_bar(n: int, progress: bool):
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=n, unit="img", desc="SynthFaces", file=sys.stderr, dynamic_ncols=True)


def _collect(results, labels, marks, boxes, bar) -> None:
    for start, lab, mk, bx in results:
        stop = start + len(lab)
        labels[start:stop], marks[start:stop], boxes[start:stop] = lab, mk, bx
        if bar is not None:
            bar.update(len(lab))


def _crlf(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _write_metadata(stage: Path, seed, n, quality, labels, marks, boxes) -> None:
    lay = _layout(seed, n)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    attr = [str(n), " ".join(CELEBA_ATTRIBUTES) + " "]
    for name, row in zip(names, labels.tolist()):
        attr.append(f"{name} {row[0]}" + "".join(f" {v:2d}" for v in row[1:]))
    (stage / "list_attr_celeba.txt").write_bytes(_crlf(attr))
    part = [f"{name} {p}" for name, p in zip(names, lay.partition.tolist())]
    (stage / "list_eval_partition.txt").write_bytes(_crlf(part))
    ident = [f"{name} {i}" for name, i in zip(names, lay.identity.tolist())]
    (stage / "identity_CelebA.txt").write_bytes(_crlf(ident))
    lm = np.rint(marks.reshape(n, 10)).astype(np.int64).tolist()
    rows = [str(n), _LANDMARK_HEADER] + [
        name + "".join(f"{v:5d}" for v in row) for name, row in zip(names, lm)
    ]
    (stage / "list_landmarks_align_celeba.txt").write_bytes(_crlf(rows))
    rows = [str(n), "image_id x_1 y_1 width height "] + [
        name + "".join(f"{v:5d}" for v in row) for name, row in zip(names, boxes.tolist())
    ]
    (stage / "list_bbox_celeba.txt").write_bytes(_crlf(rows))
    (stage / "README.md").write_text(_readme(seed, n, quality, labels, lay), encoding="utf-8")


def _readme(seed: int, n: int, quality: int, labels: np.ndarray, lay: _Layout) -> str:
    pos = (labels > 0).mean(0) if n else np.zeros(len(CELEBA_ATTRIBUTES))
    counts = np.bincount(lay.partition, minlength=3)
    ids = [len(np.unique(lay.identity[lay.partition == p])) for p in range(3)]
    rendered = "\n".join(
        f"| {a} | {100 * pos[_ATTR_INDEX[a]]:.1f}% | {_HOW[a]} |" for a in RENDERED_ATTRIBUTES
    )
    never = ", ".join(a for a in CELEBA_ATTRIBUTES if a not in RENDERED_ATTRIBUTES)
    return f"""# SynthFaces (seed {seed}, n {n})

SynthFaces is conceptvae's procedural face set: faces drawn by `conceptvae.data.synth`
(anti-aliased shapes, directional light, varied backgrounds) and written in CelebA's official
on-disk layout, so every CelebA reader reads it. It exists because CelebA cannot be downloaded
here; it is meant for demos, tests and benchmarks, not as a substitute for real photographs.

Regenerate byte for byte with `write_synthfaces(OUT, n={n}, seed={seed}, quality={quality})`
(`conceptvae synth OUT --n {n} --seed {seed}` for quality 90), with any number of workers.

## Files

- `img_align_celeba/000001.jpg` .. `{n:06d}.jpg`: 178 x 218 RGB JPEGs (quality {quality})
  in CelebA's aligned frame: eyes near (70.7, 112) and (108.2, 112), mouth centre near
  (89.4, 153.5) (1-based), jittered by pose (roll up to 8 degrees, scale up to 6%, a few
  pixels of shift and yaw).
- `list_attr_celeba.txt`: the 40 CelebA attributes, -1/1, CelebA's exact formatting (CRLF).
- `list_eval_partition.txt`: 0 train / 1 valid / 2 test.
- `identity_CelebA.txt`: person ids, 1-based.
- `list_landmarks_align_celeba.txt`: the true, rounded positions of the drawn eye centres,
  nose tip and mouth corners.
- `list_bbox_celeba.txt`: a box round the drawn face (hairline to chin, cheek to cheek) IN THE
  ALIGNED IMAGE. In real CelebA these boxes refer to the unaligned original photographs.

## People and partitions

{len(np.unique(lay.identity))} people with 5 to 30 images each (20 on average, like CelebA).
Sex, age, skin, face shape, eye colour, hair colour and style, and facial hair belong to the
person; expression, glasses, hat, make-up, jewellery, necktie, pose, lighting, background and
blur change from image to image. The split is by identity, like CelebA's: all images of a
person are in one partition, people are assigned so that the images split about 80/10/10
(a set of only a few people still gets one valid and one test person), and files are ordered
train, valid, test (each person's images scattered within their partition).
Here: train {counts[0]} images ({ids[0]} people), valid {counts[1]} ({ids[1]}), test {counts[2]}
({ids[2]}).

## Attributes drawn (rate in this set, how it looks)

| attribute | rate | drawn as |
|---|---|---|
{rendered}

Black_Hair, Blond_Hair, Brown_Hair and Gray_Hair are exclusive; red, auburn or dyed hair and
bald heads have none of them. Under a hat, Bald and Receding_Hairline are -1 (not visible).

Never drawn, always -1: {never}.

## Built-in correlations (as in CelebA, so naive mean-difference vectors are entangled)

{_CORRELATIONS}"""

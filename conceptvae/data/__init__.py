"""Datasets: real CelebA (three layouts), labelled image folders, prepared caches, SynthFaces.

Every reader returns a :class:`LabelledImages` record; :func:`open_dataset` detects what a path
holds and dispatches to the right reader.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)  # fmt: skip

LANDMARK_NAMES: tuple[str, ...] = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")

# CelebA's aligned frame: where the similarity transform put the left eye, right eye and the
# mid-point of the mouth corners, in 1-based pixel coordinates of the 178 x 218 image.
ALIGNED_SIZE: tuple[int, int] = (178, 218)  # (width, height)
ALIGNED_TEMPLATE: dict[str, tuple[float, float]] = {
    "lefteye": (70.745, 112.0),
    "righteye": (108.237, 112.0),
    "mouth": (89.432, 153.514),
}


# The same three points 0-based (pixel centres at integers), as a (3, 2) float64 array.
TEMPLATE_POINTS = (
    np.array([ALIGNED_TEMPLATE[k] for k in ("lefteye", "righteye", "mouth")], np.float64) - 1.0
)


def apply_affine(M: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """(K, 2) points through a (2, 3) affine matrix."""
    pts = np.asarray(pts, np.float64)
    return pts @ M[:, :2].T + M[:, 2]


@dataclass(frozen=True)
class Frame:
    """The model's training frame: CelebA's aligned 178 x 218 image, its centred ``crop``
    square, resized to ``image_size`` (what ``prepare`` stores in the cache).

    ``crop`` is in pixels of the aligned 178 x 218 image; the square starts at
    ``floor((178 - crop) / 2)``, ``floor((218 - crop) / 2)``, as the cache cuts it.
    """

    image_size: int = 64
    crop: float = 148

    def __post_init__(self) -> None:
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)):
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if not 0 < float(self.crop) <= min(ALIGNED_SIZE):
            raise ValueError(
                f"crop must be in (0, {min(ALIGNED_SIZE)}] pixels of the aligned image, "
                f"got {self.crop!r}"
            )

    @classmethod
    def from_meta(cls, meta: dict[str, Any], image_size: int | None = None) -> Frame:
        """The frame of a prepared cache from its ``meta.json``: ``crop`` (a missing or null
        crop means the largest centred square, 178) and ``image_size`` (taken from ``meta``
        when not given)."""
        crop = meta.get("crop")
        if isinstance(crop, bool) or not isinstance(crop, (int, float)) or crop <= 0:
            crop = min(ALIGNED_SIZE)
        if image_size is None:
            image_size = int(meta["image_size"])
        return cls(image_size=int(image_size), crop=float(crop))

    def aligned_matrix(self) -> np.ndarray:
        """(2, 3) affine from 0-based pixels of the aligned 178 x 218 image to this frame's
        0-based crop pixels: ``u = (x - left + 0.5) * image_size / crop - 0.5``."""
        w, h = ALIGNED_SIZE
        c = float(self.crop)
        left, top = math.floor((w - c) / 2), math.floor((h - c) / 2)
        s = self.image_size / c
        return np.array([[s, 0.0, (0.5 - left) * s - 0.5], [0.0, s, (0.5 - top) * s - 0.5]])

    def points(self) -> np.ndarray:
        """(3, 2) float64: left eye, right eye and mouth centre of CelebA's template in this
        frame's 0-based crop pixels (where an aligned face puts them)."""
        return apply_affine(self.aligned_matrix(), TEMPLATE_POINTS)


@dataclass
class LabelledImages:
    """A labelled image set as found on disk (before any preparation).

    Attributes:
        root: the path the user gave.
        layout: one of ``celeba-official``, ``celeba-torchvision``, ``celeba-kaggle``,
            ``folder-csv``, ``folder-pair``, ``folder-photos`` (no labels).
        image_dir: the folder the filenames are relative to.
        filenames: N image file names (relative to ``image_dir``), in file order.
        attr_names: A attribute names.
        labels: (N, A) uint8 in {0, 1} (CelebA's -1 maps to 0).
        partition: (N,) int8, 0 train / 1 valid / 2 test, or None when the set has none.
        identity: (N,) int32 person ids (-1 unknown), or None.
        landmarks: (N, 5, 2) float32 (x, y) of LANDMARK_NAMES in the file's 1-based pixel
            coordinates of the aligned image, or None.
        bbox: (N, 4) int32 ``x_1, y_1, width, height`` in the unaligned originals, or None.
        files: which metadata files were read, for ``info`` and provenance.
    """

    root: Path
    layout: str
    image_dir: Path
    filenames: list[str]
    attr_names: list[str]
    labels: np.ndarray
    partition: np.ndarray | None = None
    identity: np.ndarray | None = None
    landmarks: np.ndarray | None = None
    bbox: np.ndarray | None = None
    files: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.filenames)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.filenames[i]


def open_dataset(
    path: str | Path, labels: str | Path | None = None, *, unlabelled: bool = False
) -> LabelledImages:
    """Detect what ``path`` holds and read it: CelebA (any of its three layouts) or a folder of
    images with ``labels.csv`` (or the CSV given as ``labels``); with ``unlabelled``, also a
    folder of images with no labels at all (:func:`~conceptvae.data.folder.read_photos`).

    Raises :class:`~conceptvae.errors.DataError` when ``path`` is none of these.
    """
    # Imported here: the readers import LabelledImages from this module.
    from conceptvae.data.celeba import detect_celeba_layout, read_celeba
    from conceptvae.data.folder import read_folder, read_photos
    from conceptvae.errors import DataError

    root = Path(path)
    if not root.exists():
        raise DataError(f"{root} does not exist: pass a dataset folder")
    if labels is not None:
        return read_folder(root, labels=labels)
    if not root.is_dir():
        raise DataError(f"{root} is a file: pass the dataset folder that contains it")
    if (root / "meta.json").is_file() and (root / "images.npy").is_file():
        raise DataError(
            f"{root} is a prepared cache; open it with conceptvae.data.cache.open_cache"
        )
    if detect_celeba_layout(root) is not None:
        return read_celeba(root)
    if (root / "labels.csv").is_file():
        return read_folder(root)
    if unlabelled:
        return read_photos(root)
    raise DataError(
        f"{root} is not a dataset: expected CelebA (img_align_celeba/ + list_attr_celeba.txt), "
        "the torchvision layout (PATH/celeba/...), Kaggle CelebA (list_attr_celeba.csv), a "
        "folder of images with labels.csv, or a prepared cache (meta.json + images.npy)"
    )

"""Datasets: real CelebA (three layouts), labelled image folders, prepared caches, SynthFaces.

Every reader returns a :class:`LabelledImages` record; :func:`open_dataset` detects what a path
holds and dispatches to the right reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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


@dataclass
class LabelledImages:
    """A labelled image set as found on disk (before any preparation).

    Attributes:
        root: the path the user gave.
        layout: one of ``celeba-official``, ``celeba-torchvision``, ``celeba-kaggle``,
            ``folder-csv``, ``folder-pair``.
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


def open_dataset(path: str | Path, labels: str | Path | None = None) -> LabelledImages:
    """Detect what ``path`` holds and read it: CelebA (any of its three layouts) or a folder of
    images with ``labels.csv`` (or the CSV given as ``labels``).

    Raises :class:`~conceptvae.errors.DataError` when ``path`` is none of these.
    """
    # Imported here: the readers import LabelledImages from this module.
    from conceptvae.data.celeba import detect_celeba_layout, read_celeba
    from conceptvae.data.folder import read_folder
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
    raise DataError(
        f"{root} is not a dataset: expected CelebA (img_align_celeba/ + list_attr_celeba.txt), "
        "the torchvision layout (PATH/celeba/...), Kaggle CelebA (list_attr_celeba.csv), a "
        "folder of images with labels.csv, or a prepared cache (meta.json + images.npy)"
    )

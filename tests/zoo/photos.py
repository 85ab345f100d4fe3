"""A deterministic folder of ordinary photos for the model zoo, made from images that install offline.

Sources (all freely licensed, all installed by the zoo's setup, nothing downloaded at run time):

- Debian's ``opencv-doc`` (``apt-get install opencv-doc``): OpenCV's sample photos under
  ``/usr/share/doc/opencv-doc/examples`` (Apache-2.0 / BSD-3-Clause, see that package's copyright file).
- scikit-image's ``skimage.data`` (``pip install scikit-image``): the photos its wheel ships (CC0 or
  public domain, see ``skimage/data/README.txt``).

Each photo gives three images: the whole photo and two seeded crops (50-90% of each side), each with
its long side scaled down to at most ``MAX_SIDE`` pixels and saved as JPEG. So the folder holds
``3 * len(PHOTOS)`` = 120 images. Crops of one photo share its ``group`` (the photo's name), so a
calibration / held-out split by group never puts crops of one photo on both sides.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPENCV_EXAMPLES = Path("/usr/share/doc/opencv-doc/examples")
INSTALL_HINT = "apt-get install opencv-doc && pip install -c constraints.txt scikit-image"
MAX_SIDE = 512
CROPS_PER_PHOTO = 2
SEED = 14  # the number; any fixed seed would do
VERSION = 1
"""Bump when the recipe changes, so a cached folder of an older recipe is never reused."""

# (name, source): opencv-doc paths are relative to OPENCV_EXAMPLES; skimage names are skimage.data functions.
# Ordinary photos only: no charts, drawings, renders, calibration boards on their own, micrographs or telescopes.
PHOTOS: tuple[tuple[str, str], ...] = (
    *((Path(p).stem, f"opencv:{p}") for p in (
        "data/aloeL.jpg", "data/apple.jpg", "data/baboon.jpg", "data/basketball1.png", "data/board.jpg",
        "data/box_in_scene.png", "data/building.jpg", "data/butterfly.jpg", "data/chicky_512.png",
        "data/ela_original.jpg", "data/fruits.jpg", "data/graf1.png", "data/home.jpg", "data/left01.jpg",
        "data/leuvenA.jpg", "data/leuvenB.jpg", "data/licenseplate_motion.jpg", "data/messi5.jpg",
        "data/orange.jpg", "data/pic4.png", "data/rubberwhale1.png", "data/smarties.png", "data/squirrel_cls.jpg",
        "data/stuff.jpg", "alphamat/input_images/plant.jpg", "hfs/data/000.jpg",
        "text/scenetext01.jpg", "text/scenetext02.jpg", "text/scenetext03.jpg", "text/scenetext04.jpg",
        "text/scenetext05.jpg", "text/scenetext06.jpg")),
    ("monarch", "opencv:dnn_superres/butterfly.png"), ("redhouse", "opencv:reg/home.png"),
    *((name, f"skimage:{name}") for name in ("astronaut", "chelsea", "coffee", "rocket",
                                             "stereo_motorcycle", "camera")),
)


assert len({name for name, _ in PHOTOS}) == len(PHOTOS), "photo names must be unique (they name the files)"


class PhotosMissing(RuntimeError):
    """A source of the photo folder is not installed (the message names what to install)."""


@dataclass(frozen=True)
class PhotoSet:
    folder: Path
    """The images, flat (``<photo>-<k>.jpg``)."""
    groups: dict[str, str]
    """File name -> the photo it was cut from."""

    @property
    def files(self) -> list[Path]:
        return sorted(self.folder.iterdir())

    def split(self, holdout_every: int = 3) -> tuple[list[str], list[str]]:
        """(calibration photos, held-out photos) by photo: every ``holdout_every``-th photo is held out."""
        photos = sorted(set(self.groups.values()))
        held = set(photos[holdout_every - 1::holdout_every])
        return [p for p in photos if p not in held], [p for p in photos if p in held]


def _load(source: str) -> np.ndarray:
    from PIL import Image

    kind, _, name = source.partition(":")
    if kind == "opencv":
        path = OPENCV_EXAMPLES / name
        if not path.is_file():
            raise PhotosMissing(f"{path} is missing: {INSTALL_HINT}")
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    try:
        import skimage.data
    except ImportError:
        raise PhotosMissing(f"scikit-image is not installed: {INSTALL_HINT}") from None
    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
        array = array[0]
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def _fit(array: np.ndarray) -> "Image.Image":  # noqa: F821 - PIL imported lazily
    from PIL import Image

    image = Image.fromarray(array)
    scale = MAX_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    return image


def _random_crop(array: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """50-90% of each side, anywhere in the photo."""
    height, width = array.shape[:2]
    h, w = int(height * rng.uniform(0.5, 0.9)), int(width * rng.uniform(0.5, 0.9))
    top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    return array[top:top + h, left:left + w]


def _crops(array: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    return [array, *(_random_crop(array, rng) for _ in range(CROPS_PER_PHOTO))]


def recipe_digest() -> str:
    return hashlib.sha256(json.dumps([VERSION, MAX_SIDE, CROPS_PER_PHOTO, SEED, PHOTOS]).encode()).hexdigest()[:12]


def build_photo_set(root: Path) -> PhotoSet:
    """The photo folder under ``root`` (made once; reused while the recipe is unchanged)."""
    folder = root / f"photos-{recipe_digest()}"
    index = folder.with_suffix(".json")
    if index.is_file() and folder.is_dir():
        return PhotoSet(folder, json.loads(index.read_text()))
    import shutil

    staging = root / f".{folder.name}.partial"
    for leftover in (staging, folder):  # an interrupted earlier attempt
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    groups: dict[str, str] = {}
    for position, (name, source) in enumerate(PHOTOS):
        rng = np.random.default_rng([SEED, position])
        for k, crop in enumerate(_crops(_load(source), rng)):
            file_name = f"{name}-{k}.jpg"
            _fit(crop).save(staging / file_name, quality=92)
            groups[file_name] = name
    staging.rename(folder)  # a folder appears complete or not at all
    index.write_text(json.dumps(groups, indent=1, sort_keys=True))
    return PhotoSet(folder, groups)


def more_crops(root: Path, names: list[str], per_photo: int, seed: int) -> PhotoSet:
    """``per_photo`` further seeded crops (same recipe) of each photo in ``names``: a larger held-out set for
    measurements whose differences one of 39 images would decide (crops of one photo are correlated, so
    rates over them are compared by photo, not by image)."""
    import shutil

    chosen = hashlib.sha256(" ".join(sorted(names)).encode()).hexdigest()[:8]
    folder = root / f"crops-{recipe_digest()}-{per_photo}-{seed}-{chosen}"
    index = folder.with_suffix(".json")
    if index.is_file() and folder.is_dir():
        return PhotoSet(folder, json.loads(index.read_text()))
    staging = root / f".{folder.name}.partial"
    for leftover in (staging, folder):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    groups: dict[str, str] = {}
    wanted = set(names)
    for position, (name, source) in enumerate(PHOTOS):
        if name not in wanted:
            continue
        array, rng = _load(source), np.random.default_rng([seed, position])
        for k in range(per_photo):
            file_name = f"{name}-x{k:02d}.jpg"
            _fit(_random_crop(array, rng)).save(staging / file_name, quality=92)
            groups[file_name] = name
    staging.rename(folder)
    index.write_text(json.dumps(groups, indent=1, sort_keys=True))
    return PhotoSet(folder, groups)


def subset(photos: PhotoSet, names: list[str], destination: Path) -> Path:
    """A folder with the images of the given photos only (hard links where possible)."""
    import os
    import shutil

    destination.mkdir(parents=True, exist_ok=True)
    wanted = set(names)
    for file_name, group in sorted(photos.groups.items()):
        if group in wanted and not (destination / file_name).exists():
            try:
                os.link(photos.folder / file_name, destination / file_name)
            except OSError:
                shutil.copy2(photos.folder / file_name, destination / file_name)
    return destination

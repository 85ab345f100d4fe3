"""Deterministic image sets for the benchmark: Fashion-MNIST (always) and scikit-image photos (optional).

The ImageNet-sized networks get 224x224 RGB tensors normalised with the ImageNet
mean/std, made either from Fashion-MNIST training images (upsampled bilinearly and
repeated over the three channels) or from the real photos bundled with
scikit-image (seeded random crops). Every set is chosen by a seed and a role, so
the images that settle BatchNorm, calibrate and check fidelity never overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from toolchain.errors import UsageError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
CNN_SIZE = 224

CnnSource = Literal["fashion", "photos"]
Role = Literal["batchnorm", "calibration", "holdout"]
# Fixed, disjoint slices of one seeded permutation of the training split, per role.
_ROLE_OFFSETS: dict[str, int] = {"batchnorm": 0, "calibration": 10_000, "holdout": 20_000}

# Natural RGB photos that ship inside the scikit-image wheel (no download needed).
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray
    """float32 (N, 1, 28, 28) in [0, 1]: the bundled model's ``gray01`` preprocessing."""
    labels: np.ndarray
    """int64 (N,)"""
    indices: np.ndarray
    """Index of each image in its Fashion-MNIST split, for the record."""


@lru_cache(maxsize=2)
def _fashion_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    from toolchain.examples.fashion_mnist.train import load_split

    return load_split(FASHION_DIR, split)


def gray01(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) in [0, 1] (the example's ``gray01`` preset)."""
    return (images.astype(np.float32) / 255.0)[:, None]


def fashion_subset(split: Literal["train", "t10k"], count: int | None, seed: int | None) -> LabelledImages:
    """``count`` images of a split: seeded random choice, or the first ``count`` when ``seed`` is None."""
    images, labels = _fashion_split(split)
    if count is None or count >= len(images):
        indices = np.arange(len(images))
    elif seed is None:
        indices = np.arange(count)
    else:
        indices = np.sort(np.random.default_rng(seed).choice(len(images), count, replace=False))
    return LabelledImages(gray01(images[indices]), labels[indices].astype(np.int64), indices)


def _imagenet_normalise(rgb01: np.ndarray) -> np.ndarray:
    return ((rgb01 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _fashion_rgb224(count: int, role: Role, seed: int) -> np.ndarray:
    from PIL import Image

    images, _ = _fashion_split("train")
    order = np.random.default_rng(seed).permutation(len(images))
    picked = order[_ROLE_OFFSETS[role]: _ROLE_OFFSETS[role] + count]
    # Bilinear 28 -> 224 keeps the garment's shape smooth; gray repeated over R, G and B.
    resized = np.stack([np.asarray(Image.fromarray(images[i]).resize((CNN_SIZE, CNN_SIZE), Image.BILINEAR))
                        for i in picked])
    rgb = np.repeat(resized[:, None].astype(np.float32) / 255.0, 3, axis=1)
    return _imagenet_normalise(rgb)


@lru_cache(maxsize=1)
def _skimage_photos() -> tuple[np.ndarray, ...]:
    try:
        import skimage.data
    except ImportError:
        raise UsageError("--cnn-data photos needs scikit-image", hint="pip install scikit-image") from None
    return tuple(getattr(skimage.data, name)() for name in _SKIMAGE_PHOTOS)


def _random_crop(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A square crop of 35-100% of the short side, resized to 224, flipped half the time."""
    from PIL import Image

    height, width = photo.shape[:2]
    side = int(min(height, width) * rng.uniform(0.35, 1.0))
    top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
    crop = Image.fromarray(photo[top: top + side, left: left + side]).resize((CNN_SIZE, CNN_SIZE), Image.BILINEAR)
    array = np.asarray(crop, np.float32) / 255.0
    return array[:, ::-1] if rng.random() < 0.5 else array


def _photo_rgb224(count: int, role: Role, seed: int) -> np.ndarray:
    photos = _skimage_photos()
    rng = np.random.default_rng([seed, _ROLE_OFFSETS[role]])
    crops = [_random_crop(photos[i % len(photos)], rng) for i in range(count)]
    return _imagenet_normalise(np.stack(crops).transpose(0, 3, 1, 2))


def cnn_images(source: CnnSource, count: int, role: Role, seed: int) -> np.ndarray:
    """float32 (count, 3, 224, 224), ImageNet-normalised, for one role (never overlapping another role)."""
    if source == "fashion":
        return _fashion_rgb224(count, role, seed)
    return _photo_rgb224(count, role, seed)


def describe_cnn_source(source: CnnSource) -> str:
    if source == "fashion":
        return ("Fashion-MNIST training images, upsampled bilinearly from 28x28 to 224x224, the gray channel "
                "repeated as R, G and B, then ImageNet mean/std normalisation")
    return (f"seeded random square crops (35-100% of the short side, random horizontal flip) of the "
            f"{len(_SKIMAGE_PHOTOS)} RGB photos bundled with scikit-image ({', '.join(_SKIMAGE_PHOTOS)}), "
            f"resized to 224x224, ImageNet mean/std normalisation")

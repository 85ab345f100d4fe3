"""Training and held-out images for compression, from one image folder.

A thin layer over ``calibration.dataset.build_calibration_set``: its seeded,
disjoint split gives the training images (its *calibration* part) and the
held-out images (its *holdout* part), preprocessed by the same declared spec
``convert``/``calibrate`` use, so a pruned model is measured on exactly what
the exported one will see.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.compress.checks import is_whole_number
from toolchain.errors import InputFileError, UsageError


@dataclass(eq=False)  # eq=False: comparing numpy arrays with == is not a bool
class ImageSplit:
    """Preprocessed training and held-out images; labels are None for an unlabelled folder."""

    train: np.ndarray
    held_out: np.ndarray
    train_labels: np.ndarray | None
    held_out_labels: np.ndarray | None
    class_names: tuple[str, ...] | None
    spec: dict[str, Any] = field(default_factory=dict)
    summary: str = ""


def load_images(folder: Path, input_shape: tuple[int, ...], *, holdout: int | None, count: int | None, seed: int,
                preprocess: str | dict | None, labels: bool, cache_dir: Path | None = None) -> ImageSplit:
    """Split the images under ``folder`` into ``holdout`` held-out images and up to ``count`` training ones.

    ``holdout`` None: ``calibration.dataset.default_holdout`` of the folder's size (40%, 16 to 128, at most
    half). ``count`` None takes every remaining image. ``labels`` True requires one sub-folder per class
    (sorted names are the class indices); False ignores any sub-folders.
    """
    from calibration.dataset import build_calibration_set, check_varied

    spec = _spec(preprocess, input_shape)
    chosen = holdout is None
    train_count, holdout = _train_count(Path(folder), holdout, count)
    samples = build_calibration_set(Path(folder), spec, count=train_count, holdout=holdout, seed=seed,
                                    cache_dir=cache_dir, labelled=labels)
    check_varied(samples, folder)  # training and measuring on copies of one image is meaningless
    if tuple(samples.calibration.shape[1:]) != tuple(input_shape[1:]):
        raise UsageError(f"images preprocess to shape {tuple(samples.calibration.shape[1:])} but the model input "
                         f"is {tuple(input_shape[1:])}", hint="Check --input and --preprocess.")
    if len(samples.holdout) == 0:  # every held-out file was unreadable
        raise InputFileError(f"none of the {holdout} held-out images in '{folder}' could be read")
    train_labels = _train_labels(samples) if labels else None
    # Copies: the set's arrays are read-only (shared), while training wants ordinary tensors.
    return ImageSplit(train=np.array(samples.calibration), held_out=np.array(samples.holdout),
                      train_labels=train_labels,
                      held_out_labels=None if samples.holdout_labels is None else np.array(samples.holdout_labels),
                      class_names=samples.class_names, spec=dict(samples.spec),
                      summary=samples.summary() + ("; held out: the default for this folder (40%, 16 to 128, at most "
                                                   "half; --holdout to choose)" if chosen else ""))


def _spec(preprocess: str | dict | None, input_shape: tuple[int, ...]):
    from calibration.spec import PreprocessSpec

    if isinstance(preprocess, dict):
        return PreprocessSpec.from_dict(preprocess)
    return PreprocessSpec.from_input_shape(input_shape, preset=preprocess)


def _train_count(folder: Path, holdout: int | None, count: int | None) -> tuple[int, int]:
    """How many training and held-out images to take; a folder too small for the split is a one-line error."""
    from calibration.dataset import MIN_SAMPLES, default_holdout
    from calibration.folder import list_images

    if holdout is None:
        available = len(list_images(folder).files)
        if available < MIN_SAMPLES:
            raise UsageError(f"'{folder}' has {available} images, too few for training and a held-out check "
                             f"(at least {MIN_SAMPLES} are needed)", hint="Add images, or choose --holdout yourself.")
        holdout = default_holdout(available)
    if not is_whole_number(holdout, 1):
        raise UsageError(f"the held-out split must hold at least 1 image, got {holdout!r}",
                         hint="Measuring accuracy or agreement needs held-out images; raise --holdout.")
    if count is not None and not is_whole_number(count, 1):
        raise UsageError(f"the number of training images must be at least 1, got {count!r}")
    available = len(list_images(folder).files)
    if available <= holdout:
        suggestion = f"Lower --holdout to {available // 4} or add images" if available >= 4 else "Add images"
        raise UsageError(f"'{folder}' has {available} images, too few for {holdout} held-out images plus "
                         f"training images", hint=f"{suggestion}.")
    return (available - holdout if count is None else min(count, available - holdout)), holdout


def _train_labels(samples) -> np.ndarray:
    """Class indices of the training images: the class folder is the first part of each relative path."""
    index = {name: i for i, name in enumerate(samples.class_names)}
    return np.asarray([index[name.split("/", 1)[0]] for name in samples.calibration_files], dtype=np.int64)

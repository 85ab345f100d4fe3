"""Bundled Fashion-MNIST classifier: the model the README's first command converts.

Ships a small trained CNN (``weights.pth``, a state dict), the record of the run
that produced it (``training.json``) and 300 real test-set images
(``samples/<class_name>/<test_index:05d>.png``, 30 per class) usable as
calibration and verification data.

This module must stay import-light (no torch): the CLI reads these constants at
start-up. The model class lives in ``.model`` and the training script in
``.train``; both import torch.

Preprocessing preset ``gray01``: decode as 8-bit grayscale ("L"), keep the
28x28 size, divide by 255 to get float32 in [0, 1], lay out as NCHW
(1, 1, 28, 28). No mean/std normalisation is applied.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

# "module:Class" reference, resolved lazily so importing this package never imports torch.
MODEL_CLASS: str = "toolchain.examples.fashion_mnist.model:FashionCNN"

INPUT_NAME: str = "image"
INPUT_SHAPE: tuple[int, int, int, int] = (1, 1, 28, 28)
OUTPUT_NAME: str = "logits"

# Index i is the name of label i in the dataset; names double as sample folder names.
CLASS_NAMES: tuple[str, ...] = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)

# Grayscale, pixel / 255, NCHW, no mean/std (see the module docstring).
PREPROCESS: dict[str, str] = {"preset": "gray01"}

# Sample folders are "<label>_<class>": ImageFolder-style readers sort class folders by
# name, and this keeps that order equal to the model's output order.
SAMPLE_FOLDERS: tuple[str, ...] = tuple(f"{label}_{name}" for label, name in enumerate(CLASS_NAMES))


def _package_dir() -> Path:
    # importlib.resources finds the data in editable and regular installs alike.
    return Path(str(resources.files(__name__)))


def weights_path() -> Path:
    """The trained state dict (load with ``torch.load(..., weights_only=True)``)."""
    return _package_dir() / "weights.pth"


def samples_dir() -> Path:
    """Folder of bundled test-set PNGs, one sub-folder per entry of ``CLASS_NAMES``."""
    return _package_dir() / "samples"


def training_record_path() -> Path:
    """JSON record of the training run that produced ``weights.pth``."""
    return _package_dir() / "training.json"

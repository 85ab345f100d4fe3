"""Calibration images without a framework: the folder reader and the declared preprocessing.

Imports only numpy, Pillow and pydantic, so it works (and is importable) without
torch, tensorflow or onnxruntime. ``PreprocessSpec`` says how one image becomes one
model input and is stored in artifact manifests; ``calibration.folder`` finds,
opens and batches the images.
"""

from calibration.dataset import CalibrationSet, build_calibration_set, is_array_source
from calibration.folder import (
    IMAGE_SUFFIXES,
    ImageListing,
    labelled_folder,
    list_images,
    load_images,
    open_image,
    sample_files,
)
from calibration.spec import PRESETS, PreprocessSpec

__all__ = [
    "IMAGE_SUFFIXES",
    "PRESETS",
    "CalibrationSet",
    "ImageListing",
    "PreprocessSpec",
    "build_calibration_set",
    "is_array_source",
    "labelled_folder",
    "list_images",
    "load_images",
    "open_image",
    "sample_files",
]

"""Ingest frontends: PyTorch, TensorFlow/Keras and ONNX into one ONNX model.

``detect_format`` decides by extension and, where extensions are ambiguous
(``.pt`` is used for TorchScript, state dicts and pickled models alike), by the
file's content; ``ingest`` dispatches to the frontend. Frontend modules import
their framework lazily, so this package is cheap to import.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from toolchain.errors import InputFileError, UsageError
from toolchain.frontends.base import ConvertOptions, IngestedModel

ONNX_SUFFIXES = {".onnx"}
TORCH_SUFFIXES = {".pt", ".pth", ".ts", ".pt2", ".tar", ".bin"}
KERAS_SUFFIXES = {".keras"}
H5_SUFFIXES = {".h5", ".hdf5"}
SUPPORTED = ".onnx, .pt/.pth/.ts (TorchScript, state dict, pickled model), .pt2 (torch.export), .keras, .h5, or a SavedModel folder"

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def detect_format(source: Path | None, options: ConvertOptions) -> str:
    """Name of the source format: onnx, torch, torch-export, state-dict, savedmodel, keras or h5."""
    if options.model_class is not None:
        if options.weights is None and source is None:
            raise UsageError("--model-class needs the weights file, as SRC or with --weights")
        if options.weights is not None and source is not None:
            raise UsageError("give the weights either as SRC or with --weights, not both")
        return "state-dict"
    if options.weights is not None:
        raise UsageError("--weights needs --model-class to say which architecture the weights belong to")
    if source is None:
        raise UsageError("no source model given")
    if not source.exists():
        raise InputFileError(f"source model '{source}' does not exist")
    if source.is_dir():
        if (source / "saved_model.pb").is_file() or (source / "saved_model.pbtxt").is_file():
            return "savedmodel"
        raise InputFileError(f"folder '{source}' is not a TensorFlow SavedModel (no saved_model.pb inside)")
    suffix = source.suffix.lower()
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix == ".pt2":
        return "torch-export"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix in H5_SUFFIXES:
        return "h5"
    return _sniff(source)


def _sniff(source: Path) -> str:
    with open(source, "rb") as handle:
        head = handle.read(8)
    if head == _HDF5_MAGIC:
        return "h5"
    if zipfile.is_zipfile(source):
        return "torch"
    raise InputFileError(f"cannot tell what kind of model '{source.name}' is (unknown extension '{source.suffix}')",
                         hint=f"Supported: {SUPPORTED}.")


def ingest(source: Path | None, options: ConvertOptions) -> IngestedModel:
    """Load ``source`` with its framework and export it to ONNX, with a reference runner."""
    kind = detect_format(source, options)
    if kind == "onnx":
        from toolchain.frontends import onnx_frontend

        return onnx_frontend.ingest_onnx(source, options)
    if kind in {"torch", "torch-export", "state-dict"}:
        from toolchain.frontends import torch_frontend

        return torch_frontend.ingest_torch(source, kind, options)
    from toolchain.frontends import tensorflow_frontend
    from toolchain.quiet import native_stderr_captured

    # TensorFlow's runtime logs device probing (e.g. a failed cuInit on CPU machines) from C++.
    with native_stderr_captured():
        if kind == "savedmodel":
            return tensorflow_frontend.ingest_savedmodel(source, options)
        return tensorflow_frontend.ingest_keras_file(source, options)

"""``edgekiln run``: feed an artifact with arrays or images and return its outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.artifact import Artifact
from toolchain.errors import InputFileError, UsageError
from toolchain.fileio import check_array_file, require_file
from toolchain.frontends.base import Feed
from toolchain.onnx_io import TensorInfo

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}


def _load_array(path: Path) -> np.ndarray:
    check_array_file(path)
    try:
        value = np.load(path, allow_pickle=False)  # pickled object arrays could run code
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"cannot read '{path}' as a NumPy array: {exc}") from exc
    if isinstance(value, np.lib.npyio.NpzFile):
        raise InputFileError(f"'{path.name}' is an .npz archive; pass it without a NAME= prefix")
    return value


def _cast(value: np.ndarray, info: TensorInfo, path: Path) -> np.ndarray:
    """``value`` in the input's dtype; refused where that would drop part of it (complex to real, text)."""
    if value.dtype.kind not in "biuf":
        raise InputFileError(f"'{path.name}' holds {value.dtype} values, which input '{info.name}' ({info.dtype}) "
                             "cannot take without losing part of them")
    return value.astype(info.dtype, copy=False)


def _load_image(path: Path, info: TensorInfo, preprocess: dict | None) -> np.ndarray:
    from calibration.folder import load_images
    from calibration.spec import PreprocessSpec
    from toolchain.feeds import concrete_shape

    spec = PreprocessSpec.from_dict(preprocess) if preprocess else PreprocessSpec.from_input_shape(concrete_shape(info))
    batch, _ = load_images([path], spec, skip_bad=False)
    return batch.astype(info.dtype, copy=False)


def build_feed(values: list[str], inputs: list[TensorInfo], preprocess: dict | None = None) -> Feed:
    """Parse ``[NAME=]FILE`` values (``.npy``, ``.npz`` or an image) into a feed for ``inputs``."""
    if not values:
        raise UsageError("give the model's input with --input FILE (.npy, .npz or an image)")
    by_name = {i.name: i for i in inputs}
    feed: Feed = {}
    for value in values:
        name, sep, file_text = value.rpartition("=")
        path = require_file(Path(file_text if sep else value), "input")
        if path.suffix.lower() == ".npz" and not sep:
            check_array_file(path)
            with np.load(path, allow_pickle=False) as archive:
                feed.update({key: archive[key] for key in archive.files})
            continue
        if not sep:
            if len(inputs) != 1:
                raise UsageError(f"the model has {len(inputs)} inputs; use NAME=FILE ({', '.join(by_name)})")
            name = inputs[0].name
        if name not in by_name:
            raise UsageError(f"the model has no input '{name}'; its inputs are {', '.join(by_name)}")
        info = by_name[name]
        feed[name] = (_load_image(path, info, preprocess) if path.suffix.lower() in IMAGE_SUFFIXES
                      else _cast(_load_array(path), info, path))
    missing = sorted(set(by_name) - set(feed))
    if missing:
        raise UsageError(f"no value given for input(s) {', '.join(missing)}")
    return feed


def run_artifact(artifact_path: Path, values: list[str], *, threads: int | None = None) -> tuple[Feed, Feed]:
    """Return (feed, outputs) of one run of the artifact."""
    from backends.registry import get_backend

    artifact = Artifact.open(artifact_path)
    options = artifact.runtime_options
    if threads:
        options["threads"] = threads
    with get_backend(artifact.backend).load(artifact.model_path, options) as runner:
        feed = build_feed(values, runner.inputs, artifact.preprocess)
        return feed, runner.run(feed)

"""Inputs for verification and benchmarking: seeded random tensors or real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.errors import UsageError
from toolchain.fileio import MAX_ARRAY_BYTES, check_array_file
from toolchain.frontends.base import Feed
from toolchain.inputs import concrete_dims
from toolchain.onnx_io import TensorInfo


def concrete_shape(info: TensorInfo, batch: int = 1) -> tuple[int, ...]:
    """``info``'s shape with symbolic axis 0 set to ``batch``; other symbolic axes are an error."""
    return concrete_dims(info.name, info.shape, batch)


# The largest single input tensor the tool will make up (random verification and benchmark inputs).
MAX_INPUT_BYTES = MAX_ARRAY_BYTES
_SMALL_DRAW_BYTES = 64 << 20


def check_input_size(name: str, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The element count of a tensor, refused before allocating if over ``MAX_INPUT_BYTES`` (a typo'd or
    hostile shape)."""
    count = 1
    for dim in shape:
        count *= int(dim)  # Python ints: a product of huge dims must not wrap around as int64 would
    size = count * np.dtype(dtype).itemsize
    if size > MAX_INPUT_BYTES:
        shown = "x".join(str(d) for d in shape)
        raise UsageError(f"input '{name}' of shape {shown} ({np.dtype(dtype).name}) would take {size / 2**30:,.1f} "
                         f"GiB, more than the {MAX_INPUT_BYTES >> 30} GiB edgekiln allocates for one input",
                         hint="Check the declared input shape (--input NAME:SHAPE).")
    return count


def random_feed(inputs: list[TensorInfo], *, seed: int = 0, batch: int = 1) -> Feed:
    """One seeded random tensor per input: standard normal floats, small non-negative ints, random bools."""
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for info in inputs:
        if info.dtype.kind not in "fciub":
            raise UsageError(f"input '{info.name}' takes strings; edgekiln makes up verification and benchmark "
                             "inputs only for numbers and booleans", hint="Skip verification with --no-verify.")
        shape = concrete_shape(info, batch)
        count = check_input_size(info.name, shape, info.dtype)
        if np.issubdtype(info.dtype, np.floating):
            # Large inputs are drawn in float32 (a float64 draw would double the memory); small ones keep the
            # float64 draw so that earlier records' verification inputs stay exactly reproducible.
            small = count * 8 <= _SMALL_DRAW_BYTES
            draw_dtype = np.float64 if info.dtype == np.float64 or small else np.float32
            feed[info.name] = rng.standard_normal(shape, dtype=draw_dtype).astype(info.dtype, copy=False)
        elif info.dtype == np.bool_:
            feed[info.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            # Integer inputs are usually indices or token ids: keep them small and valid.
            feed[info.name] = rng.integers(0, 2, shape).astype(info.dtype)
    return feed


def random_feeds(inputs: list[TensorInfo], *, count: int = 2, seed: int = 0, batch: int = 1) -> list[Feed]:
    return [random_feed(inputs, seed=seed + i, batch=batch) for i in range(count)]


def image_feeds(inputs: list[TensorInfo], folder: Path, *, count: int = 8, seed: int = 0,
                preprocess: str | dict | None = None) -> list[Feed]:
    """Feeds built from real images in ``folder``: one image per feed, preprocessed by ``spec``.

    Only single-input image models can be fed from a folder; the spec defaults to
    the one inferred from the input's shape.
    """
    from calibration.folder import list_images, load_images, sample_files

    if len(inputs) != 1:
        raise UsageError(f"--calib images can feed a model with one input; this model has {len(inputs)}")
    info = inputs[0]
    shape = concrete_shape(info, batch=1)
    spec = resolve_preprocess(preprocess, info)
    files = list_images(folder).files
    chosen = sample_files(files, min(count, len(files)), seed=seed)
    batch, _skipped = load_images(chosen, spec)
    if batch.shape[1:] != shape[1:]:
        raise UsageError(f"images preprocess to shape {batch.shape[1:]} but input '{info.name}' expects {shape[1:]}")
    batch = batch.astype(info.dtype, copy=False)
    per_feed = shape[0]
    usable = (len(batch) // per_feed) * per_feed
    return [{info.name: batch[i:i + per_feed]} for i in range(0, usable, per_feed)]


def resolve_preprocess(preprocess: str | dict | None, info: TensorInfo):
    """The ``PreprocessSpec`` for an image input: a stored spec dict, a preset name, or inferred from its shape."""
    from calibration.spec import PreprocessSpec

    if isinstance(preprocess, dict):
        return PreprocessSpec.from_dict(preprocess)
    return PreprocessSpec.from_input_shape(concrete_shape(info, batch=1), preset=preprocess)


def image_preprocess_or_none(preprocess: str | dict | None, inputs: list[TensorInfo]) -> dict | None:
    """The resolved spec as a dict when the model takes one image-like input, else None."""
    if len(inputs) != 1 or len(inputs[0].shape) not in (3, 4):
        return None
    try:
        return resolve_preprocess(preprocess, inputs[0]).to_dict()
    except UsageError:
        if preprocess is not None:
            raise
        return None


def array_feeds(inputs: list[TensorInfo], source: Path, *, count: int = 8) -> list[Feed]:
    """Feeds from already-preprocessed samples: an .npy/.npz of (N, ...) rows, or a folder of .npy files."""
    from calibration.dataset import build_calibration_set

    if len(inputs) != 1:
        raise UsageError(f"samples from '{source.name}' can feed a model with one input; this model has {len(inputs)}")
    info = inputs[0]
    samples = build_calibration_set(source, None, count=1, holdout=0)  # validates the file, never unpickles
    available = _sample_count(source)
    if available > 1:
        samples = build_calibration_set(source, None, count=min(count, available), holdout=0)
    batch = np.asarray(samples.calibration).astype(info.dtype, copy=False)
    per_feed = concrete_shape(info, batch=1)[0]
    usable = (len(batch) // per_feed) * per_feed
    return [{info.name: batch[i:i + per_feed]} for i in range(0, usable, per_feed)]


def _sample_count(source: Path) -> int:
    if source.is_dir():
        return len(list(source.glob("*.npy")))
    check_array_file(source)
    data = np.load(source, mmap_mode="r", allow_pickle=False)
    if isinstance(data, np.lib.npyio.NpzFile):
        with data:
            first = data[data.files[0]] if data.files else np.zeros(0)
            return int(first.shape[0]) if first.ndim else 1
    return int(data.shape[0]) if data.ndim else 1

"""TensorFlow/Keras frontend: SavedModel folders, ``.keras`` archives and legacy ``.h5`` files.

Every source becomes one ``tf.function`` with an explicit input signature that
returns a dict of named outputs; ``tf2onnx.convert.from_function`` turns it into
ONNX and the same function is the reference runner. ``tf2onnx.convert.from_keras``
walks Keras 2 internals and fails on Keras 3 Sequential models (``KeyError:
'keras_tensor_N'``), while a tf.function works alike for Sequential and
functional models and for SavedModel signatures.

TensorFlow, Keras, tf2onnx and h5py are imported inside the functions (see
``toolchain.lazy``) so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolchain.errors import ConversionError, InputFileError, ToolchainError, UsageError, clip, first_line
from toolchain.fileio import require_file
from toolchain.frontends.base import ConvertOptions, Feed, IngestedModel, ReferenceFn
from toolchain.inputs import InputSpec
from toolchain.lazy import require
from toolchain.onnx_io import checker_message
from toolchain.quiet import quiet

Dim = int | str
# Runs the source model: positional input tensors -> outputs keyed by ONNX output name.
ModelBody = Callable[[Sequence[Any]], dict[str, Any]]

# Loggers that chat at INFO/WARNING while loading and converting (tf2onnx logs every step).
_NOISY_LOGGERS = ("tf2onnx", "tensorflow", "absl", "keras", "h5py")
# Layer classes whose config carries Python bytecode that Keras executes on load.
# TFSMLayer loads and runs another SavedModel, named by a path in the file.
_UNSAFE_CLASSES = {"Lambda", "__lambda__", "TFSMLayer"}
_BATCH_DIM = "batch"
_SAFE_MODE_HINT = "Pass --no-keras-safe-mode only if you trust the file."


@dataclass(frozen=True)
class _SourceInput:
    """One input as the source model declares it (``None`` for unknown sizes, or for an unknown rank)."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str


@dataclass(frozen=True)
class _Signature:
    """The tf.function to convert and run, with the ONNX names and dims it implies."""

    function: Any
    inputs: tuple[_SourceInput, ...]
    dims: tuple[tuple[Dim, ...], ...]
    dtypes: tuple[str, ...]
    outputs: tuple[str, ...]


# --------------------------------------------------------------------------- public


def ingest_savedmodel(path: Path, options: ConvertOptions) -> IngestedModel:
    """Convert a TensorFlow SavedModel folder's serving signature to ONNX."""
    tf = require("tensorflow", "Converting a TensorFlow SavedModel")
    with quiet(*_NOISY_LOGGERS):
        loaded = _load_savedmodel(tf, path, options.trust_savedmodel)
        key, signature = _serving_signature(loaded, path)
        keys, inputs = _signature_inputs(signature)
        body = _signature_body(tf, signature, keys)
        ingested = _ingest(tf, body, inputs, options, "savedmodel", path.name)
    # The reference closes over the signature; keep the loaded object alive with it.
    ingested.reference = _keep_alive(ingested.reference, loaded)
    ingested.notes.append(f"converted SavedModel signature '{key}'")
    return ingested


def ingest_keras_file(path: Path, options: ConvertOptions) -> IngestedModel:
    """Convert a Keras ``.keras`` archive or legacy ``.h5`` model to ONNX."""
    source_format = "keras" if path.suffix.lower() == ".keras" else "h5"
    tf = require("tensorflow", "Converting a Keras model")
    keras = require("keras", "Loading a Keras model")
    with quiet(*_NOISY_LOGGERS):
        model = _load_keras(keras, path, source_format, options)
        inputs = _keras_inputs(model, path)
        body = _keras_body(tf, keras, model, len(inputs))
        return _ingest(tf, body, inputs, options, source_format, model.name)


# --------------------------------------------------------------------- shared core


def _ingest(tf: Any, body: ModelBody, inputs: Sequence[_SourceInput], options: ConvertOptions,
            source_format: str, graph_name: str) -> IngestedModel:
    _check_opset(options.opset_or_default)
    _check_override_names(inputs, options)
    overrides = [options.input_for(inp.name, i, len(inputs)) for i, inp in enumerate(inputs)]
    dims = tuple(_resolve_dims(inp, spec, options) for inp, spec in zip(inputs, overrides))
    dtypes = tuple(_resolve_dtype(inp, spec) for inp, spec in zip(inputs, overrides))
    signature = _trace(tf, body, inputs, dims, dtypes)
    model = _convert(signature, options.opset_or_default)
    _name_dims(model, signature, options.dynamic_batch)
    model.graph.name = _safe_name(graph_name, "model")
    _check_converted(model, options.opset_or_default)
    return IngestedModel(model=model, reference=_reference(signature), source_format=source_format,
                         framework="tensorflow", framework_version=str(tf.__version__),
                         notes=_batch_notes(inputs, overrides, dims))


def _check_opset(opset: int) -> None:
    # Fail before tracing: tf2onnx only notices deep inside the conversion.
    constants = require("tf2onnx.constants", "Converting a TensorFlow model to ONNX")
    highest = max(getattr(constants, "OPSET_TO_IR_VERSION", None) or {opset: 0})
    if opset > highest:
        raise ConversionError(f"tf2onnx converts to ONNX opsets up to {highest}, not {opset}",
                              hint=f"Pass --opset {highest} or lower.")


def _check_override_names(inputs: Sequence[_SourceInput], options: ConvertOptions) -> None:
    names = {inp.name for inp in inputs}
    unknown = [spec.name for spec in options.inputs if spec.name is not None and spec.name not in names]
    if unknown:
        raise UsageError(f"--input names '{unknown[0]}', but the model's inputs are: {', '.join(sorted(names))}")
    if len(inputs) > 1 and any(spec.name is None for spec in options.inputs):
        raise UsageError(f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                         "name the one each --input is for (NAME:SHAPE)")


def _resolve_dims(inp: _SourceInput, spec: InputSpec | None, options: ConvertOptions) -> tuple[Dim, ...]:
    """Final dims of one input: ints are static, strings name symbolic ONNX dims."""
    shape = inp.shape
    if shape is None:  # unknown rank (some SavedModel signatures): only an override can say
        if spec is None:
            raise UsageError(f"input '{inp.name}' has unknown rank",
                             hint=f"Give its shape with --input {inp.name}:SHAPE.")
        shape = (None,) * len(spec.shape)
    if spec is not None and len(spec.shape) != len(shape):
        raise UsageError(f"--input for '{inp.name}' gives shape {_fmt(spec.shape)} (rank {len(spec.shape)}), "
                         f"but the model's input has shape {_fmt(shape)} (rank {len(shape)})")
    dims: list[Dim] = []
    for axis, size in enumerate(shape):
        wanted = spec.shape[axis] if spec is not None else None
        if axis == 0 and options.dynamic_batch:
            dims.append(wanted if isinstance(wanted, str) else _BATCH_DIM)
        elif wanted is not None:
            dims.append(_check_override_dim(inp.name, shape, axis, wanted))
        elif size is not None:
            dims.append(size)
        elif axis == 0:
            dims.append(1)
        else:
            raise UsageError(f"input '{inp.name}' has unknown size at axis {axis} (model shape {_fmt(shape)})",
                             hint=f"Give its shape with --input {inp.name}:SHAPE, e.g. "
                                  f"--input {inp.name}:{_example_shape(shape)}.")
    return tuple(dims)


def _batch_notes(inputs: Sequence[_SourceInput], overrides: Sequence[InputSpec | None],
                 dims: Sequence[tuple[Dim, ...]]) -> list[str]:
    # Only batch sizes this frontend chose, not ones the user gave.
    fixed = [inp.name for inp, spec, d in zip(inputs, overrides, dims)
             if spec is None and d and d[0] == 1 and inp.shape and inp.shape[0] is None]
    if not fixed:
        return []
    return [f"batch size of {', '.join(fixed)} fixed to 1 (open in the model; --dynamic-batch keeps it symbolic)"]


def _check_override_dim(name: str, shape: tuple[int | None, ...], axis: int, wanted: Dim) -> Dim:
    size = shape[axis]
    if size is None or wanted == size:
        return wanted
    change = "makes it dynamic" if isinstance(wanted, str) else f"gives size {wanted}"
    raise UsageError(f"the model fixes axis {axis} of '{name}' at {size} (model shape {_fmt(shape)}), "
                     f"but --input {change}")


def _resolve_dtype(inp: _SourceInput, spec: InputSpec | None) -> str:
    # A requested dtype becomes the ONNX input's; the graph casts it to what the model takes.
    if spec is None or spec.dtype is None:
        return inp.dtype
    return spec.dtype


def _trace(tf: Any, body: ModelBody, inputs: Sequence[_SourceInput], dims: tuple[tuple[Dim, ...], ...],
           dtypes: tuple[str, ...]) -> _Signature:
    """Wrap ``body`` in a tf.function with a concrete signature and trace it once."""
    specs = [tf.TensorSpec([d if isinstance(d, int) else None for d in shape], tf.as_dtype(dtype), name=inp.name)
             for inp, shape, dtype in zip(inputs, dims, dtypes)]
    order: list[str] = []
    input_names = {inp.name for inp in inputs}

    def call(*args: Any) -> dict[str, Any]:
        # Cast overridden dtypes back to what the model was built for.
        cast = [arg if arg.dtype == tf.as_dtype(inp.dtype) else tf.cast(arg, inp.dtype)
                for arg, inp in zip(args, inputs)]
        # An output may not reuse an input's name: ONNX tensor names are unique.
        outputs = {(f"{k}_out" if k in input_names else k): v for k, v in body(cast).items()}
        order[:] = list(outputs)
        return outputs

    function = tf.function(call, input_signature=specs)
    try:
        function.get_concrete_function()
    except ToolchainError:
        raise
    except Exception as exc:  # shape/dtype mismatches surface while tracing
        shapes = ", ".join(f"{inp.name}:{_fmt(d)}" for inp, d in zip(inputs, dims))
        raise ConversionError(f"TensorFlow could not run the model on inputs {shapes}: {first_line(exc)}") from exc
    return _Signature(function, tuple(inputs), dims, dtypes, tuple(order))


def _convert(signature: _Signature, opset: int) -> onnx.ModelProto:
    tf2onnx_convert = require("tf2onnx.convert", "Converting a TensorFlow model to ONNX")
    specs = signature.function.input_signature
    # tf2onnx numbers generated node names from a process-wide counter; restart it so converting
    # the same model twice in one process gives byte-identical ONNX.
    require("tf2onnx.utils", "Converting a TensorFlow model to ONNX").INTERNAL_NAME = 1
    try:
        with _muted("tf2onnx"):
            model, _ = tf2onnx_convert.from_function(signature.function, input_signature=specs, opset=opset)
    except ToolchainError:
        raise
    except Exception as exc:
        raise ConversionError(f"tf2onnx could not convert the model: {first_line(exc)}") from exc
    _order_outputs(model, signature.outputs)
    # tf2onnx records the traced function's name ("__inference_call_123"), whose number is a
    # process-wide TensorFlow counter: dropping it keeps repeated conversions byte-identical.
    model.graph.doc_string = ""
    return model


def _order_outputs(model: onnx.ModelProto, order: Sequence[str]) -> None:
    # tf2onnx lists dict outputs sorted by key; restore the model's own order.
    by_name = {out.name: out for out in model.graph.output}
    if set(by_name) != set(order):
        raise ConversionError(f"tf2onnx produced outputs {sorted(by_name)}, expected {list(order)}")
    ordered = [onnx.ValueInfoProto() for _ in order]
    for target, name in zip(ordered, order):
        target.CopyFrom(by_name[name])
    del model.graph.output[:]
    model.graph.output.extend(ordered)


def _name_dims(model: onnx.ModelProto, signature: _Signature, dynamic_batch: bool) -> None:
    """Replace tf2onnx's ``unk__N`` dim names with the user's (or ``batch``)."""
    by_name = {value.name: value for value in model.graph.input}
    for inp, dims in zip(signature.inputs, signature.dims):
        value = by_name.get(inp.name)
        if value is None:
            continue
        for proto, dim in zip(value.type.tensor_type.shape.dim, dims):
            if isinstance(dim, str):
                proto.dim_param = dim
    if not dynamic_batch:
        return
    batch = next((d[0] for d in signature.dims if d and isinstance(d[0], str)), _BATCH_DIM)
    for value in model.graph.output:
        shape = value.type.tensor_type.shape
        if shape.dim and not shape.dim[0].HasField("dim_value"):
            shape.dim[0].dim_param = batch


def _check_converted(model: onnx.ModelProto, opset: int) -> None:
    # tf2onnx converts with continue_on_error: ops it cannot map stay in the graph as TF ops.
    unknown = sorted({node.op_type for node in model.graph.node
                      if node.domain in ("", "ai.onnx") and not onnx.defs.has(node.op_type)})
    if unknown:
        raise ConversionError(f"tf2onnx cannot convert TensorFlow op(s) {', '.join(unknown)} to ONNX opset {opset}")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"the converted model fails the ONNX checker: {checker_message(exc)}") from exc


def _reference(signature: _Signature) -> ReferenceFn:
    names = [inp.name for inp in signature.inputs]
    dtypes = [_numpy_dtype(d) for d in signature.dtypes]

    def run(feed: Feed) -> Feed:
        missing = [n for n in names if n not in feed]
        if missing:
            raise UsageError(f"reference run is missing input(s) {', '.join(missing)}")
        args = [np.asarray(feed[n], dtype=dt) for n, dt in zip(names, dtypes)]
        with quiet(*_NOISY_LOGGERS):
            outputs = signature.function(*args)
        return {name: np.asarray(outputs[name].numpy()) for name in signature.outputs}

    return run


def _keep_alive(reference: ReferenceFn, owner: Any) -> ReferenceFn:
    def run(feed: Feed) -> Feed:
        _ = owner
        return reference(feed)

    return run


# -------------------------------------------------------------------------- Keras


def _load_keras(keras: Any, path: Path, source_format: str, options: ConvertOptions) -> Any:
    require_file(path, "Keras model")
    if path.stat().st_size == 0:
        raise InputFileError(f"Keras model '{path}' is empty")
    try:
        config = _keras_archive_config(path) if source_format == "keras" else _h5_config(path)
        unsafe = _unsafe_layers(config)
    except RecursionError:  # json and the layer scan recurse per level; no real model nests this deep
        raise InputFileError(f"the model config in '{path}' nests too deep to read (a corrupt or hostile file)") \
            from None
    if unsafe and options.keras_safe_mode:
        _refuse_unsafe(path, unsafe)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=options.keras_safe_mode)
    except ToolchainError:
        raise
    except RecursionError:
        raise InputFileError(f"the model config in '{path}' nests too deep for Keras to load") from None
    except Exception as exc:
        if "safe_mode" in str(exc):  # unsafe code the config scan did not spot
            _refuse_unsafe(path, [])
        raise InputFileError(f"cannot load Keras model '{path}': {_keras_reason(exc)}") from exc


def _keras_reason(exc: BaseException) -> str:
    """Keras nests the cause of a failed load ("Sequential could not be deserialized ... Exception encountered:
    Error when deserializing class 'Dense' ... Exception encountered: <reason>"): name the layer and the
    innermost reason, which its first line leaves out."""
    text = str(exc)
    causes = [c.strip() for c in re.findall(r"Exception encountered: ([^\n]+)", text)]
    if not causes:
        return first_line(exc)
    layers = re.findall(r"deserializing class '([^']+)' using config=\{'name': '([^']*)'", text)
    where = f"layer '{layers[-1][1]}' ({layers[-1][0]}) cannot be built from its config: " if layers else ""
    return clip(where + causes[-1])


def _keras_archive_config(path: Path) -> Any:
    """The architecture JSON of a ``.keras`` zip archive, read without executing anything."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("config.json")
    except zipfile.BadZipFile as exc:
        raise InputFileError(f"'{path}' is not a readable .keras archive (corrupt or truncated zip)") from exc
    except KeyError as exc:
        raise InputFileError(f"'{path}' is a zip file but not a Keras model (no config.json inside)") from exc
    except (OSError, zipfile.LargeZipFile, RuntimeError) as exc:
        raise InputFileError(f"cannot read .keras archive '{path}': {first_line(exc)}") from exc
    return _parse_config(text, path)


def _h5_config(path: Path) -> Any:
    """The ``model_config`` attribute of a legacy Keras HDF5 file."""
    h5py = require("h5py", "Reading a Keras .h5 file")
    try:
        with h5py.File(path, "r") as handle:
            text = handle.attrs.get("model_config")
    except OSError as exc:
        raise InputFileError(f"'{path}' is not a readable HDF5 file (corrupt or truncated): "
                             f"{first_line(exc)}") from exc
    if text is None:
        raise InputFileError(f"'{path}' holds weights only, no model architecture",
                             hint="Save the whole model (model.save('model.keras')) and convert that.")
    return _parse_config(text, path)


def _parse_config(text: str | bytes, path: Path) -> Any:
    try:
        return json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"the model config in '{path}' is not valid JSON (corrupt file?)") from exc


def _unsafe_layers(config: Any) -> list[str]:
    """Names of Lambda layers (and serialized lambdas) anywhere in a Keras config."""
    found: list[str] = []
    if isinstance(config, Mapping):
        if config.get("class_name") in _UNSAFE_CLASSES:
            inner = config.get("config")
            found.append(str(inner.get("name", "lambda")) if isinstance(inner, Mapping) else "lambda")
        for value in config.values():
            found.extend(_unsafe_layers(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_unsafe_layers(value))
    return found


def _refuse_unsafe(path: Path, layers: Sequence[str]) -> None:
    names = ", ".join(f"'{name}'" for name in sorted(set(layers)))
    what = f"Lambda layer(s) {names}" if layers else "serialized Python code"
    raise InputFileError(f"'{path.name}' contains {what}, whose code would run on load; "
                         f"refused in Keras safe mode", hint=_SAFE_MODE_HINT)


def _keras_inputs(model: Any, path: Path) -> list[_SourceInput]:
    try:
        tensors = list(model.inputs)
    except (AttributeError, ValueError) as exc:  # subclassed or never-built models
        raise ConversionError(f"Keras model in '{path.name}' has no defined inputs: {first_line(exc)}",
                              hint="Save it as a functional or Sequential model with an Input layer.") from exc
    names = _unique([_safe_name(getattr(t, "name", None), f"input_{i}") for i, t in enumerate(tensors)])
    return [_SourceInput(name, tuple(t.shape), _dtype_name(t.dtype)) for name, t in zip(names, tensors)]


def _keras_body(tf: Any, keras: Any, model: Any, input_count: int) -> ModelBody:
    struct = getattr(model, "_inputs_struct", None)  # functional models fed by a dict or nested list
    fallback = getattr(model, "output_names", None) or []  # Sequential has none: its last layer names it

    def body(args: Sequence[Any]) -> dict[str, Any]:
        if struct is not None and not isinstance(struct, (list, tuple)):
            packed = keras.tree.pack_sequence_as(struct, list(args))
        else:
            packed = args[0] if input_count == 1 else list(args)
        result = model(packed, training=False)
        if isinstance(result, Mapping):
            return _name_outputs(list(result.values()), [str(k) for k in result])
        flat = tf.nest.flatten(result)
        names = list(fallback) if len(fallback) == len(flat) else _last_layer_names(model, len(flat))
        return _name_outputs(flat, names)

    return body


def _last_layer_names(model: Any, count: int) -> list[str]:
    layers = getattr(model, "layers", None) or []
    if count == 1 and layers:
        return [layers[-1].name]
    return [f"output_{i}" for i in range(count)]


def _name_outputs(tensors: Sequence[Any], names: Sequence[str]) -> dict[str, Any]:
    clean = _unique([_safe_name(n, f"output_{i}") for i, n in enumerate(names)])
    return dict(zip(clean, tensors))


# ---------------------------------------------------------------------- SavedModel


def _load_savedmodel(tf: Any, path: Path, trusted: bool) -> Any:
    if not path.exists():
        raise InputFileError(f"SavedModel '{path}' does not exist")
    if not path.is_dir():
        raise InputFileError(f"SavedModel '{path}' is not a folder")
    if not trusted:
        _refuse_unsafe_ops(path)
    try:
        return tf.saved_model.load(str(path))
    except Exception as exc:
        problem = _variables_problem(path)
        if problem:
            raise InputFileError(f"SavedModel '{path}' is missing its variables/ data ({problem})",
                                 hint="Copy the whole SavedModel folder, including variables/.") from exc
        raise InputFileError(f"cannot load SavedModel '{path}': {first_line(exc)}") from exc


def _refuse_unsafe_ops(path: Path) -> None:
    """Refuse, before TensorFlow loads or runs anything, a graph that reads or writes files, runs Python or
    reaches the network (``toolchain.frontends.savedmodel_ops``)."""
    from google.protobuf.message import DecodeError

    from toolchain.frontends.savedmodel_ops import unsafe_ops

    if not (path / "saved_model.pb").is_file():
        return  # TensorFlow's loader says what is missing (a .pbtxt is read by it alone)
    try:
        found = unsafe_ops(path)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise InputFileError(f"SavedModel '{path}': saved_model.pb is not a readable SavedModel "
                             f"({type(exc).__name__})") from exc
    if found:
        others = sorted({f.op for f in found} - {found[0].op})
        more = f" (also {', '.join(others)})" if others else ""
        raise InputFileError(f"SavedModel '{path}' does more than compute: its graph has {found[0].describe()}{more}; "
                             "converting and verifying it would run that",
                             hint="Pass --trust-savedmodel only if you trust the file.")


def _variables_problem(path: Path) -> str | None:
    # Checked only after a failed load: a SavedModel without variables is legal.
    folder = path / "variables"
    if not folder.is_dir():
        return "no variables/ folder"
    if not (folder / "variables.index").is_file():
        return "variables/variables.index is missing"
    if not any(folder.glob("variables.data-*")):
        return "no variables/variables.data-* shards"
    return None


def _serving_signature(loaded: Any, path: Path) -> tuple[str, Any]:
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if "serving_default" in signatures:
        return "serving_default", signatures["serving_default"]
    if len(signatures) == 1:
        return next(iter(signatures.items()))
    if not signatures:
        raise InputFileError(f"SavedModel '{path}' has no serving signature, so nothing says what to convert",
                             hint="Re-export it with model.export(DIR) (Keras) or "
                                  "tf.saved_model.save(obj, DIR, signatures=obj.fn.get_concrete_function(...)).")
    raise InputFileError(f"SavedModel '{path}' has several signatures ({', '.join(sorted(signatures))}) "
                         "and none is 'serving_default'", hint="Re-export it with a 'serving_default' signature.")


def _signature_inputs(signature: Any) -> tuple[list[str], list[_SourceInput]]:
    """The signature's keyword names and its inputs under ONNX-safe names."""
    args, kwargs = signature.structured_input_signature
    if args:  # signatures are keyword-only; anything else is not a serving signature
        raise InputFileError("the SavedModel signature takes positional arguments; expected a serving signature")
    # A loaded signature's kwargs come in no stable order; sort them (TF flattens them sorted too).
    keys = sorted((str(key) for key in kwargs), key=_natural_key)
    names = _unique([_safe_name(key, f"input_{i}") for i, key in enumerate(keys)])
    specs = [kwargs[key] for key in keys]
    inputs = [_SourceInput(name, tuple(spec.shape.as_list()) if spec.shape.rank is not None else None,
                           _dtype_name(spec.dtype)) for name, spec in zip(names, specs)]
    return keys, inputs


def _signature_body(tf: Any, signature: Any, keys: Sequence[str]) -> ModelBody:
    def body(args: Sequence[Any]) -> dict[str, Any]:
        result = signature(**dict(zip(keys, args)))
        if not isinstance(result, Mapping):
            flat = tf.nest.flatten(result)
            return _name_outputs(flat, [f"output_{i}" for i in range(len(flat))])
        # Signature dicts come back in no useful order; output_2 before output_10.
        ordered = sorted(result, key=_natural_key)
        return _name_outputs([result[k] for k in ordered], ordered)

    return body


# ------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _muted(name: str) -> Iterator[None]:
    # tf2onnx logs unsupported ops at ERROR, which ``quiet`` lets through; they come
    # back to the user as one ConversionError instead.
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def _dtype_name(dtype: Any) -> str:
    # Keras gives strings, TF gives tf.DType; both name numpy dtypes.
    return str(getattr(dtype, "name", dtype))


def _numpy_dtype(name: str) -> np.dtype | None:
    # None for TF-only dtypes (string, bfloat16): the feed is passed on uncast.
    try:
        return np.dtype(name)
    except TypeError:
        return None


def _safe_name(name: Any, fallback: str) -> str:
    """A name valid as a TF placeholder and readable as an ONNX tensor name."""
    text = re.sub(r"[^A-Za-z0-9_.\-]", "_", str(name or "")).strip("_")
    if not text:
        return fallback
    return text if text[0].isalnum() else f"t{text}"


def _unique(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    result: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in seen:
            candidate, n = f"{name}_{n}", n + 1
        seen.add(candidate)
        result.append(candidate)
    return result


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _fmt(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "(unknown rank)"
    return "x".join("?" if d is None else str(d) for d in shape) or "scalar"


def _example_shape(shape: Sequence[int | None]) -> str:
    return "x".join("1" if axis == 0 and d is None else ("SIZE" if d is None else str(d))
                    for axis, d in enumerate(shape))



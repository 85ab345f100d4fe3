"""Loading, checking and saving ONNX models with clear errors.

Models over protobuf's 2 GiB limit are stored with external data; loading checks
that every external-data file exists and stays inside the model's folder.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from toolchain.errors import InputFileError, OutputError, printable, whole_message
from toolchain.fileio import check_writable_destination, publishable, require_file

# Protobuf cannot serialise a message over 2 GiB; stay well below it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000

_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
    onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8,
    onnx.TensorProto.INT16: np.int16,
    onnx.TensorProto.INT32: np.int32,
    onnx.TensorProto.INT64: np.int64,
    onnx.TensorProto.BOOL: np.bool_,
}


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (ints for fixed dims, strings for symbolic ones) and numpy dtype of a graph input/output."""

    name: str
    shape: tuple[int | str, ...]
    dtype: np.dtype

    def describe(self) -> str:
        return f"{self.name}: {'x'.join(str(d) for d in self.shape) or 'scalar'} {self.dtype}"


def _check_external_data_paths(model: onnx.ModelProto, base: Path) -> None:
    base = base.resolve()
    for tensor in external_data_helper._get_all_tensors(model):  # onnx has no public iterator for this
        if not external_data_helper.uses_external_data(tensor):
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        name = printable(tensor.name)
        if "\x00" in location or not location:
            raise InputFileError(f"external data of tensor '{name}' has an invalid location "
                                 f"'{printable(location)}' ({'empty' if not location else 'it holds a NUL byte'})")
        try:
            target = (base / location).resolve()
        except OSError as exc:  # a name too long for the file system, a link loop
            raise InputFileError(f"external data '{printable(location)}' of tensor '{name}' cannot be resolved: "
                                 f"{exc.strerror or exc}") from exc
        if os.path.isabs(location) or base not in target.parents:
            raise InputFileError(
                f"external data '{printable(location)}' of tensor '{name}' points outside the model's folder",
                hint="Refusing to read it; keep external-data files next to the .onnx file.",
            )
        if not target.exists():
            raise InputFileError(f"external data file '{printable(location)}' for tensor '{name}' is missing")
        if not target.is_file():
            kind = "a folder" if target.is_dir() else "a FIFO, device or socket"
            raise InputFileError(f"external data '{printable(location)}' for tensor '{name}' is {kind}, "
                                 "not a data file")


def load_onnx(path: Path, *, check: bool = True) -> onnx.ModelProto:
    """Load an ONNX file (external data included) and run the checker; user-facing errors only."""
    require_file(path, "ONNX model")
    if path.stat().st_size == 0:
        raise InputFileError(f"ONNX model '{path}' is empty")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError, but also others on garbage
        raise InputFileError(f"'{path}' is not a valid ONNX model (cannot be parsed: {type(exc).__name__})") from exc
    if not model.graph.node and not model.graph.output:
        raise InputFileError(f"'{path}' parsed as ONNX but holds no graph; it is probably not an ONNX model")
    if not model.graph.output:
        raise InputFileError(f"'{path}' declares no graph outputs, so the model computes nothing anyone can read")
    _check_external_data_paths(model, path.parent)
    try:
        external_data_helper.load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise InputFileError(f"cannot read external data of '{path}': {exc}") from exc
    if check:
        check_model(model, path)
    return model


def check_model(model: onnx.ModelProto, path: Path | None = None) -> None:
    where = f"'{path}'" if path else "the model"
    try:
        if needs_external_data(model):
            # The checker cannot take a >2 GiB message; given a path it reads the data files itself.
            if path is not None:
                onnx.checker.check_model(str(path))
            else:
                _check_structure_only(model)
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InputFileError(f"{where} fails the ONNX checker: {checker_message(exc)}") from exc


def checker_message(exc: BaseException) -> str:
    """The ONNX checker's message on one line, with its node dump (``name: X OpType: Relu`` on lines of their
    own) made a phrase: cut at the first line, "...input 'b' of node: ." said nothing about which node."""
    text = whole_message(exc)

    def phrase(match: re.Match) -> str:
        name, op = match.group(1), match.group(2)
        return f"of node '{name}' ({op})" if name else f"of an unnamed {op} node"

    return re.sub(r"of node:\s*name:\s*(\S*?)\s*OpType:\s*(\S+)", phrase, text)


def _check_structure_only(model: onnx.ModelProto) -> None:
    """Check the graph of a >2 GiB in-memory model: the same model with its large weights' bytes left out."""
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    for tensor in skeleton.graph.initializer:
        if tensor.HasField("raw_data") and len(tensor.raw_data) > 1024:
            tensor.ClearField("raw_data")
            tensor.data_location = onnx.TensorProto.EXTERNAL
            entry = tensor.external_data.add()
            entry.key, entry.value = "location", "in-memory"
    onnx.checker.check_model(skeleton)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that never fails the command: a model ORT can run is still usable without it."""
    if needs_external_data(model):
        return model  # shape inference serialises the model; the checker already validated it
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is best-effort metadata; the checker already validated the model
        return model


def save_onnx(model: onnx.ModelProto, dest: Path) -> list[Path]:
    """Write ``model`` to ``dest`` atomically; large models get a ``.data`` file beside it.

    Returns the files written. Each file is renamed into place only once complete.
    """
    check_writable_destination(dest)
    large = needs_external_data(model)
    data_path = dest.parent / f"{dest.name}.data"
    try:
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.absolute().parent) as staging:
            staged = Path(staging) / dest.name
            if large:
                save_with_external_data(model, staged, data_path.name)
                publishable(Path(staging) / data_path.name)  # onnx writes external data owner-only
                os.replace(Path(staging) / data_path.name, data_path)
            else:
                onnx.save_model(model, str(staged))
            publishable(staged)
            os.replace(staged, dest)
    except OSError as exc:
        raise OutputError(f"could not write '{dest}': {exc.strerror or exc}") from exc
    if not large:
        data_path.unlink(missing_ok=True)  # stale data from an earlier large save
        return [dest]
    return [dest, data_path]


def save_with_external_data(model: onnx.ModelProto, path: Path, data_name: str) -> None:
    """Save ``model`` with its weights in ``data_name`` beside ``path``, leaving the caller's model intact.

    onnx.save_model(save_as_external_data=True) rewrites the tensors it is given into references to
    the data file, so it works on a copy: otherwise the caller's model would later be saved (or run)
    pointing at a file that is gone.
    """
    detached = onnx.ModelProto()
    detached.CopyFrom(model)
    onnx.save_model(detached, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data_name, size_threshold=1024)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the model is too large to serialise as one protobuf message."""
    try:
        return model.ByteSize() > EXTERNAL_DATA_THRESHOLD  # not cached by protobuf: called once
    except Exception:  # ByteSize overflows on >2 GiB messages in some protobuf builds
        return True


def serialized_if_small(model: onnx.ModelProto) -> bytes | None:
    """The model as one protobuf message, or None when it is too large for one (then use external data).

    Serialising directly saves the separate size pass, which costs as much as serialising itself."""
    try:
        data = model.SerializeToString()
    except Exception:  # over protobuf's 2 GiB limit
        return None
    return data if len(data) <= EXTERNAL_DATA_THRESHOLD else None


def _value_info(value: onnx.ValueInfoProto) -> TensorInfo:
    tensor_type = value.type.tensor_type
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        else:
            dims.append(dim.dim_param or "?")
    dtype = np.dtype(_ONNX_TO_NUMPY.get(tensor_type.elem_type, np.float32))
    if tensor_type.elem_type == onnx.TensorProto.STRING:
        dtype = np.dtype(object)  # not float32: made-up float inputs for it only confuse ONNX Runtime
    return TensorInfo(value.name, tuple(dims), dtype)


def graph_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """Real inputs: graph inputs that are not initializers (old exporters list weights as inputs)."""
    initializers = {init.name for init in model.graph.initializer}
    return [_value_info(v) for v in model.graph.input if v.name not in initializers]


def graph_outputs(model: onnx.ModelProto) -> list[TensorInfo]:
    return [_value_info(v) for v in model.graph.output]


def opset_version(model: onnx.ModelProto) -> int:
    return next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 0)

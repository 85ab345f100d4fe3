"""The reference runtime: ONNX Runtime on the CPU, behind the ``Runner`` interface every backend implements.

Core, not a backend: graph passes, the accuracy guard and verification all need to run the ONNX model they
judge, so they import this module (never ``backends``); the ``onnxruntime`` backend re-exports it.
"""

from __future__ import annotations

import abc
from pathlib import Path
from types import TracebackType

import numpy as np
import onnx

from toolchain.errors import InputFileError, UsageError, whole_message
from toolchain.lazy import require
from toolchain.onnx_io import TensorInfo, graph_inputs, graph_outputs
from toolchain.watchdog import RunTimeout, stoppable

Feed = dict[str, np.ndarray]


class Runner(abc.ABC):
    """Loaded model that runs feeds keyed by the ONNX input names and returns ONNX-named outputs."""

    inputs: list[TensorInfo]
    outputs: list[TensorInfo]

    @abc.abstractmethod
    def run(self, feed: Feed) -> Feed: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


def session_options(threads: int | None = None, graph_optimization: str = "all", integer_reference: bool = False):
    """ORT session options; ``integer_reference`` evaluates QuantizeLinear/DequantizeLinear as float ops
    instead of fusing them into INT8 kernels, i.e. exact integer arithmetic (int32 accumulation) whatever
    this CPU's INT8 kernels do (they saturate on x86 without VNNI)."""
    ort = require("onnxruntime", "Running an ONNX model")
    options = ort.SessionOptions()
    if integer_reference:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[graph_optimization])
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT's warnings go to stderr and would bury our one-line errors
    return options


# Initializers at least this large reach ONNX Runtime from memory, beside the serialized model rather than
# inside it: serializing a 45 MB model and parsing it back cost 70 ms of a 130 ms session creation, and the
# accuracy guard creates dozens (bench/guard.md). Outputs are bit-identical (tests/test_runtime.py).
IN_MEMORY_WEIGHT_BYTES = 1024
_IN_MEMORY_LOCATION = "edgekiln-in-memory"  # never a file: the session options supply every such tensor
_PLAIN_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT8,
                onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16, onnx.TensorProto.INT32,
                onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64, onnx.TensorProto.BOOL}


def _weights_apart(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, np.ndarray]] | None:
    """``model`` with its large main-graph initializers marked external, and their values by name
    (ORT's documented ``add_external_initializers``); None when it has none worth moving."""
    from onnx.helper import tensor_dtype_to_np_dtype

    # Reading raw_data copies it, and ByteSize() walks it: each is read once, here.
    data = {t.name: t.raw_data for t in model.graph.initializer
            if t.data_type in _PLAIN_TYPES and t.data_location == onnx.TensorProto.DEFAULT and t.HasField("raw_data")}
    moved = {name for name, raw in data.items() if len(raw) >= IN_MEMORY_WEIGHT_BYTES}
    if not moved:
        return None
    stripped = onnx.ModelProto()
    _copy_fields(model, stripped, skip="graph")
    _copy_fields(model.graph, stripped.graph, skip="initializer")
    weights: dict[str, np.ndarray] = {}
    for tensor in model.graph.initializer:
        if tensor.name not in moved:
            stripped.graph.initializer.append(tensor)
            continue
        raw = data[tensor.name]
        weights[tensor.name] = np.frombuffer(raw, tensor_dtype_to_np_dtype(tensor.data_type)).reshape(tuple(tensor.dims))
        marker = stripped.graph.initializer.add()
        marker.name, marker.data_type, marker.data_location = tensor.name, tensor.data_type, onnx.TensorProto.EXTERNAL
        marker.dims.extend(tensor.dims)
        for key, value in (("location", _IN_MEMORY_LOCATION), ("offset", "0"), ("length", str(len(raw)))):
            entry = marker.external_data.add()
            entry.key, entry.value = key, value
    return stripped, weights


def _copy_fields(source, target, skip: str) -> None:
    """Copy every set field of protobuf message ``source`` into ``target`` except ``skip`` (no deep copy of it)."""
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        field = getattr(target, descriptor.name)
        if hasattr(field, "extend"):  # a repeated field
            field.extend(value)
        elif hasattr(field, "CopyFrom"):  # a message
            field.CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


class OnnxRuntimeRunner(Runner):
    def __init__(self, session, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        self.session = session
        self.inputs = inputs
        self.outputs = outputs
        self._output_names = [o.name for o in outputs]

    @classmethod
    def from_path(cls, path: Path, threads: int | None = None, graph_optimization: str = "all",
                  integer_reference: bool = False) -> "OnnxRuntimeRunner":
        model = onnx.load(str(path), load_external_data=False)
        return cls._create(str(path), model, threads, graph_optimization, integer_reference)

    @classmethod
    def from_model(cls, model: onnx.ModelProto, threads: int | None = None,
                   graph_optimization: str = "all", integer_reference: bool = False) -> "OnnxRuntimeRunner":
        from toolchain.onnx_io import save_with_external_data, serialized_if_small

        split = _weights_apart(model)
        serialized = serialized_if_small(split[0] if split else model)
        if serialized is not None:
            return cls._create(serialized, model, threads, graph_optimization, integer_reference,
                               split[1] if split else None)
        # Over protobuf's 2 GiB limit the model cannot be serialised in memory: ORT reads it from a
        # temporary folder with its weights as external data (and keeps them mapped, so it may go).
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgekiln-ort-") as folder:
            path = Path(folder) / "model.onnx"
            save_with_external_data(model, path, "model.onnx.data")
            return cls._create(str(path), model, threads, graph_optimization, integer_reference)

    @classmethod
    def _create(cls, source: str | bytes, model: onnx.ModelProto, threads: int | None,
                graph_optimization: str, integer_reference: bool = False,
                weights: dict[str, np.ndarray] | None = None) -> "OnnxRuntimeRunner":
        ort = require("onnxruntime", "Running an ONNX model")
        options = session_options(threads, graph_optimization, integer_reference)
        if weights:  # ORT copies them into the session, so the arrays need to live only this long
            options.add_external_initializers(list(weights),
                                              [ort.OrtValue.ortvalue_from_numpy(a) for a in weights.values()])
        try:
            session = ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise InputFileError(f"ONNX Runtime cannot load the model: {whole_message(exc)}") from exc
        return cls(session, graph_inputs(model), graph_outputs(model))

    def run(self, feed: Feed) -> Feed:
        return self.run_named(feed, self._output_names)

    def run_named(self, feed: Feed, names: list[str]) -> Feed:
        """Run and return the tensors ``names`` (graph outputs, or intermediates added as outputs)."""
        expected = {i.name for i in self.inputs}
        if set(feed) != expected:
            raise UsageError(f"the model takes inputs {sorted(expected)}, got {sorted(feed)}")
        try:
            values = bounded_run(self.session, names, feed)
        except RunTimeout:
            raise
        except Exception as exc:  # ORT reports bad shapes/dtypes as its own exception types
            raise UsageError(f"ONNX Runtime rejected the inputs: {whole_message(exc)}") from exc
        return dict(zip(names, values))


def bounded_run(session, names: list[str] | None, feed: Feed) -> list:
    """``session.run`` bounded in time and stoppable by a signal (``toolchain.watchdog``)."""
    ort = require("onnxruntime", "Running an ONNX model")
    options = ort.RunOptions()
    options.log_severity_level = 4  # a stopped run's error is raised; ORT's own log line would be a second one
    with stoppable(lambda: setattr(options, "terminate", True), "ONNX Runtime"):
        return session.run(names, feed, options)

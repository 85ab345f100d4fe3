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

        serialized = serialized_if_small(model)
        if serialized is not None:
            return cls._create(serialized, model, threads, graph_optimization, integer_reference)
        # Over protobuf's 2 GiB limit the model cannot be serialised in memory: ORT reads it from a
        # temporary folder with its weights as external data (and keeps them mapped, so it may go).
        import tempfile

        with tempfile.TemporaryDirectory(prefix="edgekiln-ort-") as folder:
            path = Path(folder) / "model.onnx"
            save_with_external_data(model, path, "model.onnx.data")
            return cls._create(str(path), model, threads, graph_optimization, integer_reference)

    @classmethod
    def _create(cls, source: str | bytes, model: onnx.ModelProto, threads: int | None,
                graph_optimization: str, integer_reference: bool = False) -> "OnnxRuntimeRunner":
        ort = require("onnxruntime", "Running an ONNX model")
        try:
            session = ort.InferenceSession(source, sess_options=session_options(threads, graph_optimization,
                                                                                  integer_reference),
                                           providers=["CPUExecutionProvider"])
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
            values = self.session.run(names, feed)
        except Exception as exc:  # ORT reports bad shapes/dtypes as its own exception types
            raise UsageError(f"ONNX Runtime rejected the inputs: {whole_message(exc)}") from exc
        return dict(zip(names, values))

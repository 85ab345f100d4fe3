"""Read a ``.tflite`` file's structure (operators, tensors, buffers) into plain data.

The MCU bundle, the arena estimate and ``inspect`` all need the graph itself,
not a loaded interpreter (which hides constant buffers, and cannot load a
model whose ops the host runtime lacks). The generated flatbuffer accessors
ship with ai-edge-litert and with TensorFlow; either one is enough.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

from toolchain.errors import InputFileError, MissingDependencyError

_SCHEMA_MODULES = ("ai_edge_litert.schema_py_generated", "tensorflow.lite.python.schema_py_generated")
_IDENTIFIER = b"TFL3"

# TensorType enum value -> (name, bytes per element); 0 bytes for types with no fixed size.
_TYPES: dict[int, tuple[str, float]] = {
    0: ("float32", 4), 1: ("float16", 2), 2: ("int32", 4), 3: ("uint8", 1), 4: ("int64", 8), 5: ("string", 0),
    6: ("bool", 1), 7: ("int16", 2), 8: ("complex64", 8), 9: ("int8", 1), 10: ("float64", 8), 11: ("complex128", 16),
    12: ("uint64", 8), 13: ("resource", 0), 14: ("variant", 0), 15: ("uint32", 4), 16: ("uint16", 2),
    17: ("int4", 0.5), 18: ("bfloat16", 2),
}


@dataclass(frozen=True)
class TFLiteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    dtype: str
    constant_bytes: int
    """Bytes of constant data stored in the model (0 for activations, inputs and outputs)."""
    scales: tuple[float, ...] = ()
    zero_points: tuple[int, ...] = ()
    quantized_dimension: int = 0
    is_variable: bool = False

    @property
    def is_constant(self) -> bool:
        return self.constant_bytes > 0

    @property
    def nbytes(self) -> int:
        """Bytes one instance of this tensor occupies at run time (unknown dims count as 1)."""
        count = int(np.prod([max(d, 1) for d in self.shape])) if self.shape else 1
        return int(np.ceil(count * _TYPES.get(_type_code(self.dtype), ("", 0))[1]))


@dataclass(frozen=True)
class TFLiteOperator:
    index: int
    op: str
    """Builtin operator name (``CONV_2D``) or ``CUSTOM:<name>``."""
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass
class TFLiteGraph:
    """The main subgraph of a TFLite model, plus model-level facts."""

    size_bytes: int
    version: int
    description: str
    tensors: list[TFLiteTensor]
    operators: list[TFLiteOperator]
    inputs: list[int]
    outputs: list[int]
    subgraphs: int
    signatures: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    """signature key -> {"inputs": {name: tensor index}, "outputs": {name: tensor index}}."""

    @property
    def op_types(self) -> list[str]:
        """Distinct operator names in first-use order."""
        return list(dict.fromkeys(op.op for op in self.operators))


def _type_code(name: str) -> int:
    return next((code for code, (n, _) in _TYPES.items() if n == name), -1)


def _schema() -> ModuleType:
    import importlib

    for name in _SCHEMA_MODULES:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise MissingDependencyError("reading a .tflite file needs ai-edge-litert or tensorflow",
                                 hint="Install it with: pip install 'edgekiln[tflite]'")


def _operator_names(schema: ModuleType) -> dict[int, str]:
    return {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


def read_tflite(path: Path) -> TFLiteGraph:
    """Parse ``path`` (a ``.tflite`` flatbuffer); raises ``InputFileError`` if it is not one."""
    data = Path(path).read_bytes()
    return parse_tflite(data, str(path))


def parse_tflite(data: bytes, where: str = "model") -> TFLiteGraph:
    if len(data) < 8 or data[4:8] != _IDENTIFIER:
        raise InputFileError(f"'{where}' is not a TFLite model (no TFL3 flatbuffer identifier)")
    schema = _schema()
    try:
        model = schema.Model.GetRootAs(data, 0)
        return _graph(schema, model, data)
    except InputFileError:
        raise
    except Exception as exc:  # a truncated flatbuffer fails anywhere inside the generated accessors
        raise InputFileError(f"'{where}' is a damaged TFLite model ({type(exc).__name__})") from exc


def _graph(schema: ModuleType, model, data: bytes) -> TFLiteGraph:
    if model.SubgraphsLength() < 1:
        raise InputFileError("the TFLite model has no subgraph")
    names = _operator_names(schema)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; DeprecatedBuiltinCode keeps old files readable.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(f"CUSTOM:{custom.decode()}" if builtin == schema.BuiltinOperator.CUSTOM and custom
                     else names.get(builtin, f"BUILTIN_{builtin}"))
    graph = model.Subgraphs(0)
    tensors = [_tensor(graph.Tensors(i), i, model) for i in range(graph.TensorsLength())]
    operators = [TFLiteOperator(i, codes[op.OpcodeIndex()], _ints(op.InputsAsNumpy()), _ints(op.OutputsAsNumpy()))
                 for i, op in ((i, graph.Operators(i)) for i in range(graph.OperatorsLength()))]
    description = (model.Description() or b"").decode(errors="replace")
    return TFLiteGraph(len(data), model.Version(), description, tensors, operators,
                       list(_ints(graph.InputsAsNumpy())), list(_ints(graph.OutputsAsNumpy())),
                       model.SubgraphsLength(), _signatures(model))


def _ints(value) -> tuple[int, ...]:
    # The generated accessors return 0 (not an empty array) for an absent vector.
    return tuple(int(v) for v in value) if isinstance(value, np.ndarray) else ()


def _tensor(tensor, index: int, model) -> TFLiteTensor:
    dtype = _TYPES.get(tensor.Type(), (f"type{tensor.Type()}", 0))[0]
    quant = tensor.Quantization()
    scales = zero_points = ()
    axis = 0
    if quant is not None:
        scales = tuple(float(s) for s in _floats(quant.ScaleAsNumpy()))
        zero_points = _ints(quant.ZeroPointAsNumpy())
        axis = quant.QuantizedDimension()
    shape = _ints(tensor.ShapeAsNumpy())
    signature = _ints(tensor.ShapeSignatureAsNumpy()) or shape
    return TFLiteTensor(index, (tensor.Name() or b"").decode(errors="replace"), shape, signature, dtype,
                      _buffer_bytes(model, tensor.Buffer()), scales, zero_points, axis, bool(tensor.IsVariable()))


def _floats(value) -> np.ndarray:
    return value if isinstance(value, np.ndarray) else np.zeros(0, np.float32)


def _buffer_bytes(model, buffer_index: int) -> int:
    if buffer_index <= 0 or buffer_index >= model.BuffersLength():
        return 0  # buffer 0 is the shared empty buffer of every activation
    buffer = model.Buffers(buffer_index)
    # Models over 2 GB keep data outside the flatbuffer (offset/size) instead of inline.
    return int(buffer.DataLength() or (buffer.Size() if buffer.Offset() > 1 else 0))


def _signatures(model) -> dict[str, dict[str, dict[str, int]]]:
    result: dict[str, dict[str, dict[str, int]]] = {}
    for i in range(model.SignatureDefsLength()):
        sig = model.SignatureDefs(i)
        key = (sig.SignatureKey() or b"").decode()
        result[key] = {
            "inputs": {sig.Inputs(j).Name().decode(): sig.Inputs(j).TensorIndex() for j in range(sig.InputsLength())},
            "outputs": {sig.Outputs(j).Name().decode(): sig.Outputs(j).TensorIndex()
                        for j in range(sig.OutputsLength())},
        }
    return result

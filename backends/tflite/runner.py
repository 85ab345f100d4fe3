"""Run a ``.tflite`` model with the LiteRT interpreter behind the common ``Runner`` interface.

The runner speaks the ONNX model's language: feeds and results are keyed by
ONNX names, in ONNX layout (NCHW), as float when the ONNX model uses float.
Inside, it transposes to the TFLite layout, quantizes inputs of int8/uint8
models with the tensor's own scale and zero point, and dequantizes outputs.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import Feed, Runner
from backends.tflite.io_binding import Binding, IOBindings
from toolchain.errors import InputFileError, MissingDependencyError, UsageError, first_line
from toolchain.lazy import require
from toolchain.quiet import native_stderr_captured

SIGNATURE = "serving_default"


def interpreter_class() -> type:
    """LiteRT's interpreter (``ai-edge-litert``), else TensorFlow's deprecated ``tf.lite.Interpreter``."""
    try:
        return require("ai_edge_litert.interpreter", "Running a TFLite model").Interpreter
    except MissingDependencyError:
        tf = require("tensorflow", "Running a TFLite model (without ai-edge-litert)")
        return tf.lite.Interpreter


def make_interpreter(model: Path | bytes, threads: int | None = None, xnnpack: bool = True,
                     preserve_all_tensors: bool = False):
    """A LiteRT interpreter with tensors allocated; ``preserve_all_tensors`` keeps every intermediate readable."""
    cls = interpreter_class()
    kwargs: dict[str, Any] = {"num_threads": threads} if threads else {}
    if preserve_all_tensors:
        kwargs["experimental_preserve_all_tensors"] = True
    if not xnnpack:
        # Both interpreters' modules define OpResolverType; "without default delegates" means no XNNPACK.
        resolver = sys.modules[cls.__module__].OpResolverType
        kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    source = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
    try:
        # The interpreter logs "Created TensorFlow Lite XNNPACK delegate" straight to fd 2.
        with warnings.catch_warnings(), native_stderr_captured():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            interpreter = cls(**source, **kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise InputFileError(f"the TFLite interpreter cannot load the model: {first_line(exc)}") from exc
    return interpreter


def default_bindings(interpreter) -> IOBindings:
    """Bindings for a .tflite not built by edgekiln: signature names, TFLite layout, no transposes."""
    ins, outs = tensor_details(interpreter)

    def binding(key: str, detail: dict) -> Binding:
        shape = tuple(int(d) if d >= 0 else "N" for d in detail.get("shape_signature", detail["shape"]))
        dtype = "float32" if _is_quantized(detail) else np.dtype(detail["dtype"]).name
        return Binding(key, key, shape, dtype)

    return IOBindings(tuple(binding(k, d) for k, d in ins.items()), tuple(binding(k, d) for k, d in outs.items()))


def _is_quantized(detail: dict) -> bool:
    return np.dtype(detail["dtype"]) in (np.int8, np.uint8, np.int16) and detail["quantization"][0] != 0.0


def tensor_details(interpreter) -> tuple[dict[str, dict], dict[str, dict]]:
    """Input and output details keyed by signature name (tensor name for signature-less models)."""
    if interpreter.get_signature_list():
        runner = interpreter.get_signature_runner()
        return runner.get_input_details(), runner.get_output_details()
    return ({d["name"]: d for d in interpreter.get_input_details()},
            {d["name"]: d for d in interpreter.get_output_details()})


def quantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(detail["dtype"])


def dequantize(values: np.ndarray, detail: dict) -> np.ndarray:
    scale, zero_point = detail["quantization"]
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class TFLiteRunner(Runner):
    def __init__(self, interpreter, bindings: IOBindings) -> None:
        self.interpreter = interpreter
        self.bindings = bindings
        self.inputs = [b.info() for b in bindings.inputs]
        self.outputs = [b.info() for b in bindings.outputs]
        self._in_details, self._out_details = tensor_details(interpreter)
        missing = [b.key for b in (*bindings.inputs, *bindings.outputs)
                   if b.key not in self._in_details and b.key not in self._out_details]
        if missing:
            raise InputFileError(f"the TFLite model has no tensor(s) {', '.join(missing)} that its artifact names")

    @classmethod
    def from_path(cls, path: Path, threads: int | None = None, xnnpack: bool = True,
                  io: dict[str, Any] | None = None) -> "TFLiteRunner":
        return cls.from_model(Path(path), threads=threads, xnnpack=xnnpack, io=io)

    @classmethod
    def from_model(cls, model: Path | bytes, threads: int | None = None, xnnpack: bool = True,
                   io: dict[str, Any] | None = None) -> "TFLiteRunner":
        interpreter = make_interpreter(model, threads, xnnpack)
        bindings = IOBindings.from_dict(io) if io else default_bindings(interpreter)
        return cls(interpreter, bindings)

    def run(self, feed: Feed) -> Feed:
        expected = {b.name for b in self.bindings.inputs}
        if set(feed) != expected:
            raise UsageError(f"the model takes inputs {sorted(expected)}, got {sorted(feed)}")
        arrays = {b.key: self._to_tflite(b, np.asarray(feed[b.name])) for b in self.bindings.inputs}
        self._resize_if_needed(arrays)
        for key, array in arrays.items():
            self.interpreter.set_tensor(self._in_details[key]["index"], array)
        try:
            self.interpreter.invoke()
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"the TFLite interpreter failed: {first_line(exc)}") from exc
        return {b.name: self._to_onnx(b) for b in self.bindings.outputs}

    def _to_tflite(self, binding: Binding, array: np.ndarray) -> np.ndarray:
        detail = self._in_details[binding.key]
        if binding.perm is not None:
            if array.ndim != len(binding.perm):
                raise UsageError(f"input '{binding.name}' must have {len(binding.perm)} dimensions, "
                                 f"got shape {array.shape}")
            array = array.transpose(binding.perm)
        if _is_quantized(detail) and np.issubdtype(array.dtype, np.floating):
            return quantize(array, detail)
        return np.ascontiguousarray(array, dtype=detail["dtype"])

    def _resize_if_needed(self, arrays: dict[str, np.ndarray]) -> None:
        changed = False
        for key, array in arrays.items():
            detail = self._in_details[key]
            if tuple(detail["shape"]) != array.shape:
                try:
                    self.interpreter.resize_tensor_input(detail["index"], list(array.shape), strict=True)
                except (ValueError, RuntimeError) as exc:
                    raise UsageError(f"input '{key}' has shape {array.shape}, the TFLite model expects "
                                     f"{tuple(detail['shape'])}") from exc
                changed = True
        if changed:
            self.interpreter.allocate_tensors()
            self._in_details, self._out_details = tensor_details(self.interpreter)

    def _to_onnx(self, binding: Binding) -> np.ndarray:
        detail = self._out_details[binding.key]
        value = self.interpreter.get_tensor(detail["index"])
        if _is_quantized(detail):
            value = dequantize(value, detail)
        if binding.perm is not None:
            value = value.transpose(binding.perm)
        return np.ascontiguousarray(value.astype(binding.dtype, copy=False))

    def close(self) -> None:
        self.interpreter = None

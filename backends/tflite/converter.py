"""SavedModel -> ``.tflite`` bytes at one precision, with TensorFlow's TFLiteConverter.

onnx2tf also writes float32/float16 ``.tflite`` files, but it allows TensorFlow
("Flex") ops in them, which neither the LiteRT pip runtime nor TFLite Micro can
run, and its INT8 mode converts six variants at once with its own calibration
rules. edgekiln converts the SavedModel itself, builtin ops only, one precision
per build, with the shared calibration set.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import ConversionError, UsageError, clip, first_line
from toolchain.lazy import require
from toolchain.quiet import native_stderr_captured, quiet

_TF_LOGGERS = ("tensorflow", "absl")
IO_DTYPES = ("float32", "int8")

Representative = Callable[[], Iterator[list[np.ndarray]]]


@dataclass(frozen=True)
class LowerConfig:
    """How the SavedModel becomes a TFLite model."""

    precision: str
    """fp32, fp16 (float16 weights), dynamic (int8 weights, float activations) or int8 (full integer)."""
    io_dtype: str = "float32"
    """int8 only: the type of the model's inputs and outputs (float32 keeps quantize/dequantize inside)."""
    per_channel: bool = True
    """int8/dynamic: one weight scale per output channel."""
    float_nodes: tuple[str, ...] = field(default=())
    """int8 only: TFLite tensor names whose producing ops stay in float (accuracy fallback)."""


def _tf():
    return require("tensorflow", "Lowering to TFLite")


def preload_tensorflow() -> None:
    """Import TensorFlow now, its native start-up logs captured: the build calls this while onnx2tf
    runs in its child process, so the two imports overlap instead of adding up (about 3 s each)."""
    with quiet(*_TF_LOGGERS), native_stderr_captured():
        _tf()


def saved_model_proto(saved_model: Path):
    """The parsed ``saved_model.pb`` of a SavedModel folder (TensorFlow's own protobuf class)."""
    _tf()
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((saved_model / "saved_model.pb").read_bytes())
    except (OSError, DecodeError) as exc:
        raise ConversionError(f"could not read the SavedModel's signature: {first_line(exc)}") from exc
    return proto


def _converter(saved_model: Path, config: LowerConfig, representative: Representative | None):
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if config.precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif config.precision in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter._experimental_disable_per_channel = not config.per_channel  # noqa: SLF001 - the only switch
    if config.precision == "int8":
        if representative is None:
            raise UsageError("full-integer INT8 needs calibration samples")
        converter.representative_dataset = representative
        if not config.float_nodes:
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = getattr(tf, config.io_dtype)
            converter.inference_output_type = getattr(tf, config.io_dtype)
    return converter


def lower(saved_model: Path, config: LowerConfig, representative: Representative | None = None) -> bytes:
    """The TFLite flatbuffer for ``config``; converter failures become one ``ConversionError`` line."""
    if config.io_dtype not in IO_DTYPES:
        raise UsageError(f"TFLite input/output type '{config.io_dtype}' is not one of {', '.join(IO_DTYPES)}")
    tf = _tf()
    try:
        with quiet(*_TF_LOGGERS), native_stderr_captured():
            converter = _converter(saved_model, config, representative)
            if config.float_nodes:
                return _selectively_quantized(tf, converter, representative, config.float_nodes)
            return converter.convert()
    except (ConversionError, UsageError):
        raise
    except Exception as exc:  # the converter raises ConverterError, RuntimeError, ValueError...
        raise ConversionError(f"TFLite converter failed at {config.precision}: {_converter_reason(exc)}",
                              hint="Builtin TFLite ops only; a model that needs TensorFlow (Flex) ops "
                                   "cannot run on LiteRT or TFLite Micro.") from exc


def _selectively_quantized(tf, converter, representative: Representative | None, nodes: Sequence[str]) -> bytes:
    # The quantization debugger is TensorFlow's supported way to keep named ops in float.
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(nodes))
    debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=representative,
                                                         debug_options=options)
    return debugger.get_nondebug_quantized_model()


def _converter_reason(exc: Exception) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "error:" in line:
            return clip(line.split("error:", 1)[1].strip())
    return first_line(exc)


def layer_errors(saved_model: Path, config: LowerConfig, representative: Representative,
                 debug_samples: Representative, float_stats: dict[str, Any]) -> list["LayerError"]:
    """Per-layer INT8 error (float vs quantized output of each op, fed the same quantized inputs).

    The metric is the relative RMS error ``rms(float - dequant(q)) / rms(float)``: 0 is exact, 1 means the
    layer's output is lost in quantization noise. The differences are the debugger's own NumericVerify
    results; ``rms(float)`` comes from ``float_stats`` (see ``float_stats``: the debugger's float tensors are
    not reliable). In execution order; a layer with no float magnitude scores NaN and ranks last.
    """
    tf = _tf()
    try:
        with quiet(*_TF_LOGGERS), native_stderr_captured():
            converter = _converter(saved_model, LowerConfig("int8", "float32", config.per_channel), representative)
            debugger = tf.lite.experimental.QuantizationDebugger(converter=converter, debug_dataset=debug_samples)
            debugger.run()
            dump = io.StringIO()
            debugger.layer_statistics_dump(dump)
    except Exception as exc:  # the debugger re-converts the model; same failure modes as lower()
        raise ConversionError(f"TFLite quantization debugger failed: {_converter_reason(exc)}") from exc
    return parse_layer_statistics(dump.getvalue(), float_stats)


@dataclass(frozen=True)
class LayerError:
    op: str
    tensor: str
    relative_rmse: float
    scale: float


def parse_layer_statistics(csv_text: str, float_stats: dict[str, Any]) -> list[LayerError]:
    """The debugger's CSV dump as layers; ``float_stats`` maps tensor names to objects with an ``rms``."""
    import csv

    def relative(row: dict[str, str]) -> float:
        stats = float_stats.get(row["tensor_name"])
        error = float(np.sqrt(max(float(row["mean_squared_error"]), 0.0)))
        if stats is None:
            return float("nan")
        return 0.0 if error == 0.0 else error / max(stats.rms, 1e-12)

    rows = csv.DictReader(io.StringIO(csv_text))
    return [LayerError(r["op_name"], r["tensor_name"], relative(r), float(r["scale"])) for r in rows]

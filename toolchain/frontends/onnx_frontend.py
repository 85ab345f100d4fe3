"""ONNX frontend: check, apply input overrides, optionally convert the opset.

The reference for verification is the *unmodified* model in ONNX Runtime, so
any change made here (new shapes, a different opset) is checked numerically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from toolchain.errors import ConversionError, UsageError, first_line
from toolchain.frontends.base import ConvertOptions, Feed, IngestedModel
from toolchain.inputs import InputSpec
from toolchain.onnx_io import check_model, graph_inputs, infer_shapes, load_onnx, opset_version


def ingest_onnx(source: Path, options: ConvertOptions) -> IngestedModel:
    original = load_onnx(source)
    model = onnx.ModelProto()
    model.CopyFrom(original)
    notes: list[str] = []
    changed = _apply_input_overrides(model, options)
    if options.dynamic_batch:
        _make_batch_dynamic(model)
        changed = True
    if options.opset is not None and options.opset != opset_version(model):
        model = _convert_opset(model, options.opset)
        notes.append(f"opset converted from {opset_version(original)} to {options.opset}")
        changed = True
    if changed:
        del model.graph.value_info[:]  # stale intermediate shapes would contradict the new input shapes
        check_model(model)
    model = infer_shapes(model)
    if not changed:
        notes.append("model passed through unchanged (checked and shape-inferred)")
    return IngestedModel(model=model, reference=_ort_reference(original), source_format="onnx",
                         framework="onnx", framework_version=onnx.__version__, notes=notes,
                         reference_label="the original ONNX model in ONNX Runtime")


def _ort_reference(model: onnx.ModelProto):
    """The original model in ONNX Runtime; a fixed batch-1 model runs larger batches one sample at a time."""
    runner = None
    fixed_batch_one = all(i.shape[:1] == (1,) for i in graph_inputs(model))

    def run(feed: Feed) -> Feed:
        nonlocal runner
        if runner is None:  # built on first use: passthrough without verification never pays for it
            from toolchain.runtime import OnnxRuntimeRunner

            runner = OnnxRuntimeRunner.from_model(model)
        batch = next(iter(feed.values())).shape[0] if feed else 1
        if not fixed_batch_one or batch == 1:
            return runner.run(feed)
        rows = [runner.run({k: v[i:i + 1] for k, v in feed.items()}) for i in range(batch)]
        return {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}

    return run


def _set_shape(value: onnx.ValueInfoProto, dims: tuple[int | str, ...]) -> None:
    shape = value.type.tensor_type.shape
    del shape.dim[:]
    for dim in dims:
        entry = shape.dim.add()
        if isinstance(dim, int):
            entry.dim_value = dim
        else:
            entry.dim_param = dim


def _apply_input_overrides(model: onnx.ModelProto, options: ConvertOptions) -> bool:
    infos = graph_inputs(model)
    names = [i.name for i in infos]
    for spec in options.inputs:
        if spec.name is not None and spec.name not in names:
            raise UsageError(f"--input names '{spec.name}', but the model's inputs are: {', '.join(names)}")
    if any(spec.name is None for spec in options.inputs) and len(infos) != 1:
        raise UsageError(f"the model has {len(infos)} inputs; name the one --input applies to ({', '.join(names)})")
    changed = False
    by_name = {v.name: v for v in model.graph.input}
    for index, info in enumerate(infos):
        spec = options.input_for(info.name, index, len(infos))
        if spec is None:
            continue
        _check_override(info.name, info.shape, str(info.dtype), spec)
        _set_shape(by_name[info.name], spec.shape)
        changed = True
    return changed


def _check_override(name: str, shape: tuple, dtype: str, spec: InputSpec) -> None:
    if len(spec.shape) != len(shape):
        raise UsageError(f"--input {spec} has rank {len(spec.shape)} but input '{name}' has shape "
                         f"{'x'.join(map(str, shape))} (rank {len(shape)})")
    for axis, (old, new) in enumerate(zip(shape, spec.shape)):
        if isinstance(old, int) and isinstance(new, int) and old != new:
            raise UsageError(f"--input {spec} sets axis {axis} of '{name}' to {new}, but the model fixes it to {old}",
                             hint="Only symbolic dimensions can be overridden in an ONNX model.")
    if spec.dtype is not None and spec.dtype != dtype:
        raise UsageError(f"--input {spec} asks for {spec.dtype}, but '{name}' is {dtype} in the model; "
                         "ONNX input types cannot be changed by an override")


def _make_batch_dynamic(model: onnx.ModelProto) -> None:
    initializers = {i.name for i in model.graph.initializer}
    for value in [*model.graph.input, *model.graph.output]:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 0:
            continue
        dims[0].Clear()
        dims[0].dim_param = "batch"


def _convert_opset(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    source = opset_version(model)
    if target < source:  # onnx's converter lacks most down-adapters; toolchain.opset covers the safe ones
        from toolchain.opset import convert_down

        return convert_down(model, source, target)
    try:
        return onnx.version_converter.convert_version(model, target)
    except Exception as exc:  # the converter raises RuntimeError/ValueError with C++ messages
        first = first_line(exc)
        raise ConversionError(f"cannot convert the model from opset {opset_version(model)} to {target}: {first}") from exc

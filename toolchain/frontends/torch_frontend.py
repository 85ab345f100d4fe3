"""PyTorch frontend: TorchScript, torch.export programs, state dicts and (trusted) pickled models.

Loading never unpickles arbitrary objects unless the user passes
``--trust-pickle``: everything else goes through ``torch.load(weights_only=True)``,
``torch.jit.load`` or ``torch.export.load``.

Export: the TorchScript-based exporter is used for ``nn.Module`` and TorchScript
modules (fast, mature for CNNs, and the only one that takes ScriptModules); the
dynamo exporter for ``torch.export`` programs, or when asked with ``--exporter``.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolchain.errors import ConversionError, InputFileError, UsageError, first_line
from toolchain.fileio import require_file
from toolchain.frontends.base import ConvertOptions, Feed, IngestedModel
from toolchain.inputs import InputSpec
from toolchain.lazy import require
from toolchain.onnx_io import check_model, infer_shapes
from toolchain.quiet import quiet

_PURPOSE = "Converting a PyTorch model"


def ingest_torch(source: Path | None, kind: str, options: ConvertOptions) -> IngestedModel:
    torch = require("torch", _PURPOSE)
    if kind == "torch-export":
        return _ingest_exported_program(torch, source, options)
    if kind == "state-dict":
        module, source_format = module_from_state_dict(torch, options.weights or source, options), "state-dict"
    else:
        module, source_format = load_torch_file(torch, source, options)
    module.eval()
    specs = _named_input_specs(options)
    example = tuple(example_tensor(torch, spec) for spec in specs)
    output_names = _output_names(torch, module, example)
    exporter = "torchscript" if options.exporter == "auto" else options.exporter
    if exporter == "dynamo" and isinstance(module, torch.jit.ScriptModule):
        raise UsageError("the dynamo exporter cannot export a TorchScript module; use --exporter torchscript")
    model = _export(torch, module, example, [s.name for s in specs], output_names, specs, options, exporter)
    return IngestedModel(model=model, reference=_reference(torch, module, [s.name for s in specs], output_names),
                         source_format=source_format, framework="torch", framework_version=torch.__version__,
                         notes=[f"exported with the {exporter} exporter"])


# --- loading -----------------------------------------------------------------------------------


def load_torch_file(torch: Any, source: Path, options: ConvertOptions) -> tuple[Any, str]:
    """A TorchScript module or (with ``--trust-pickle`` only) a pickled ``nn.Module``, and its format name.

    A state dict is refused with a hint to give its class; nothing else is unpickled unsafely.
    """
    require_file(source, "PyTorch model")
    if source.stat().st_size == 0:
        raise InputFileError(f"PyTorch model '{source}' is empty")
    if zipfile.is_zipfile(source):
        names = _zip_names(source)
        if any("/code/" in n or n.startswith("code/") for n in names):
            return _load_torchscript(torch, source), "torchscript"
        if not any(n.endswith("data.pkl") for n in names):
            raise InputFileError(f"'{source.name}' is a zip archive but not a PyTorch file (no data.pkl or code/ inside)")
    return _load_pickled(torch, source, options)


def _zip_names(source: Path) -> list[str]:
    try:
        with zipfile.ZipFile(source) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputFileError(f"'{source}' is a damaged archive: {exc}") from exc


def _load_torchscript(torch: Any, source: Path) -> Any:
    try:
        return torch.jit.load(str(source), map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError with long C++ traces
        raise InputFileError(f"'{source}' is not a loadable TorchScript file: {first_line(exc)}") from exc


def _load_pickled(torch: Any, source: Path, options: ConvertOptions) -> tuple[Any, str]:
    try:
        obj = torch.load(str(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for objects weights_only refuses; others for corrupt files
        if not _is_refused_pickle(torch, exc, source):
            # torch's own message here advises weights_only=False, the wrong advice for an unknown file.
            raise InputFileError(f"'{source.name}' is not a readable PyTorch file (corrupt, truncated, or "
                                 "not a PyTorch file at all)") from exc
        if not options.trust_pickle:
            raise InputFileError(
                f"'{source.name}' holds a pickled Python object, and loading it would run code from the file",
                hint="Pass --trust-pickle only if you trust its source, or save the model as TorchScript or .pt2.",
            ) from exc
        obj = _load_trusted_pickle(torch, source)
    if isinstance(obj, torch.nn.Module):
        return obj, "pickled-module"
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"'{source.name}' holds a state dict (weights only), not a model",
                         hint="Give the architecture with --model-class module:Class (and --model-kwargs if needed).")
    raise InputFileError(f"'{source.name}' holds a {type(obj).__name__}, not a model or a state dict")


def _is_refused_pickle(torch: Any, exc: Exception, source: Path) -> bool:
    """True when the safe unpickler refused a real pickle (a class or opcode it will not run).

    The error text cannot tell garbage from a protocol-5 pickle ("Unsupported operand" for both),
    so the file's structure decides: a torch.save zip with data.pkl, or a raw pickle (protocol marker).
    """
    if not isinstance(exc, torch.serialization.pickle.UnpicklingError):
        return False
    if zipfile.is_zipfile(source):
        return True  # load_torch_file already checked it holds data.pkl
    with open(source, "rb") as handle:
        return handle.read(1) == b"\x80"


def _load_trusted_pickle(torch: Any, source: Path) -> Any:
    try:
        return torch.load(str(source), map_location="cpu", weights_only=False)
    except Exception as exc:  # the pickle may need classes the user has not made importable
        raise InputFileError(f"could not unpickle '{source.name}': {first_line(exc)}",
                             hint="The model's class must be importable (check PYTHONPATH).") from exc


def module_from_state_dict(torch: Any, weights: Path, options: ConvertOptions) -> Any:
    """``options.model_class(**options.model_kwargs)`` with the state dict ``weights`` loaded (every key must match)."""
    require_file(weights, "weights file")
    model_cls = import_model_class(options.model_class or "")
    try:
        module = model_cls(**options.model_kwargs)
    except TypeError as exc:
        raise UsageError(f"cannot construct {options.model_class} with --model-kwargs "
                         f"{options.model_kwargs}: {exc}") from exc
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputFileError(f"'{weights.name}' is not a readable state dict: {first_line(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a common training-checkpoint layout
    if not isinstance(state, dict):
        raise InputFileError(f"'{weights.name}' holds a {type(state).__name__}, not a state dict")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches raise even with strict=False
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise InputFileError(f"weights do not match {options.model_class}: {_few(mismatches, 1)}",
                             hint="Check --model-class and --model-kwargs.") from exc
    if result.missing_keys or result.unexpected_keys:
        raise InputFileError(
            f"weights do not match {options.model_class}: missing {_few(result.missing_keys)}, "
            f"unexpected {_few(result.unexpected_keys)}",
            hint="Check --model-class and --model-kwargs.")
    return module


def import_model_class(reference: str) -> Any:
    """Import ``package.module:Class`` or ``path/to/file.py:Class``."""
    module_name, sep, class_name = reference.rpartition(":")
    if not sep or not module_name or not class_name:
        raise UsageError(f"bad --model-class '{reference}': expected package.module:Class or path/to/file.py:Class")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise UsageError(f"--model-class file '{path}' does not exist")
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import '{module_name}' for --model-class: {exc}") from exc
    if not hasattr(module, class_name):
        raise UsageError(f"'{module_name}' has no class '{class_name}'")
    return getattr(module, class_name)


# --- inputs and outputs -------------------------------------------------------------------------


def _named_input_specs(options: ConvertOptions) -> list[InputSpec]:
    if not options.inputs:
        raise UsageError("PyTorch models do not record their input shapes",
                         hint="Pass one --input NAME:SHAPE per input, e.g. --input input:1x3x224x224.")
    if len(options.inputs) == 1 and options.inputs[0].name is None:
        spec = options.inputs[0]
        return [InputSpec("input", spec.shape, spec.dtype)]
    return list(options.inputs)


def example_tensor(torch: Any, spec: InputSpec) -> Any:
    """A seeded example input for ``spec`` at batch 1: standard-normal floats, zeros for integer inputs."""
    shape = spec.concrete_shape(batch=1)
    rng = np.random.default_rng(0)
    if np.issubdtype(spec.numpy_dtype, np.floating):
        return torch.from_numpy(rng.standard_normal(shape).astype(spec.numpy_dtype))
    return torch.from_numpy(np.zeros(shape, dtype=spec.numpy_dtype))


def flatten_outputs(torch: Any, value: Any) -> list[Any]:
    """The tensors of a forward() result (nested tuples, lists and dicts) in order; anything else is an error."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flatten_outputs(torch, v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in flatten_outputs(torch, v)]
    raise ConversionError(f"the model returns a {type(value).__name__}; only tensors, tuples, lists and dicts export")


def _output_names(torch: Any, module: Any, example: tuple) -> list[str]:
    try:
        with torch.no_grad():
            value = module(*example)
    except Exception as exc:  # the user's forward() failed on the declared inputs
        raise UsageError(f"the model fails on inputs of the given shape(s): {first_line(exc)}",
                         hint="Check the --input shapes and dtypes.") from exc
    if isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
        return [str(k) for k in value]
    count = len(flatten_outputs(torch, value))
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def _dynamic_axes(specs: list[InputSpec], output_names: list[str], options: ConvertOptions) -> dict | None:
    axes: dict[str, dict[int, str]] = {}
    for spec in specs:
        symbolic = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
        if options.dynamic_batch:
            symbolic.setdefault(0, "batch")
        if symbolic:
            axes[spec.name] = symbolic
    if any(0 in a for a in axes.values()):
        batch_name = next(a[0] for a in axes.values() if 0 in a)
        for name in output_names:
            axes[name] = {0: batch_name}
    return axes or None


def _reference(torch: Any, module: Any, input_names: list[str], output_names: list[str]):
    def run(feed: Feed) -> Feed:
        with torch.no_grad():
            value = module(*[torch.from_numpy(np.ascontiguousarray(feed[n])) for n in input_names])
        tensors = flatten_outputs(torch, value)
        return {name: t.detach().cpu().numpy() for name, t in zip(output_names, tensors)}

    return run


# --- export --------------------------------------------------------------------------------------


def _export(torch: Any, module: Any, example: tuple, input_names: list[str], output_names: list[str],
            specs: list[InputSpec], options: ConvertOptions, exporter: str) -> onnx.ModelProto:
    dynamic_axes = _dynamic_axes(specs, output_names, options)
    kwargs: dict[str, Any] = dict(input_names=input_names, output_names=output_names,
                                  opset_version=options.opset_or_default, dynamic_axes=dynamic_axes)
    if exporter == "dynamo":
        require("onnxscript", "The dynamo ONNX exporter")
        kwargs.update(dynamo=True, optimize=True, verbose=False)
    else:
        kwargs.update(dynamo=False, do_constant_folding=True)
    return export_to_proto(torch, module, example, kwargs)


def export_to_proto(torch: Any, module: Any, example: tuple, kwargs: dict[str, Any]) -> onnx.ModelProto:
    """``torch.onnx.export(module, example, **kwargs)`` to a checked, shape-inferred ``ModelProto``.

    Exporter failures become one-line ``ConversionError``s; the exporters' log noise is silenced.
    """
    with tempfile.TemporaryDirectory(prefix="edgekiln-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        try:
            with quiet("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "onnx_ir"):
                torch.onnx.export(module, example, str(path), **kwargs)
        except (UsageError, InputFileError):
            raise
        except Exception as exc:  # exporter failures come as many exception types
            raise ConversionError(f"PyTorch could not export the model to ONNX: {first_line(exc)}",
                                  hint="Try the other exporter with --exporter dynamo|torchscript, or another --opset.") from exc
        model = onnx.load(str(path))  # external data, if any, is loaded from the temp folder
    check_model(model)
    return infer_shapes(model)


def _ingest_exported_program(torch: Any, source: Path, options: ConvertOptions) -> IngestedModel:
    require_file(source, "torch.export program")
    try:
        with quiet("torch.export", "torch"):  # it logs the failure's traceback at WARNING level
            program = torch.export.load(str(source))
    except Exception as exc:  # corrupt archives raise various errors
        raise InputFileError(f"'{source}' is not a loadable torch.export (.pt2) program: {first_line(exc)}") from exc
    if options.exporter == "torchscript":
        raise UsageError("a torch.export program needs the dynamo exporter; drop --exporter torchscript")
    args, _ = program.example_inputs or ((), {})
    if options.inputs or options.dynamic_batch:
        raise UsageError("a .pt2 program fixes its input shapes at export time; --input and --dynamic-batch "
                         "cannot change them",
                         hint="Re-export with torch.export using the shapes you need.")
    input_names = [spec.arg.name for spec in program.graph_signature.input_specs
                   if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    module = program.module()
    output_names = _output_names(torch, module, tuple(args))
    require("onnxscript", "The dynamo ONNX exporter")
    kwargs = dict(input_names=input_names, output_names=output_names, opset_version=options.opset_or_default,
                  dynamo=True, optimize=True, verbose=False)
    model = export_to_proto(torch, program, tuple(args), kwargs)
    return IngestedModel(model=model, reference=_reference(torch, module, input_names, output_names),
                         source_format="torch-export", framework="torch", framework_version=torch.__version__,
                         notes=["exported with the dynamo exporter"])




def _few(items: list[str], limit: int = 3) -> str:
    if not items:
        return "none"
    shown = ", ".join(items[:limit])
    return f"{shown} (+{len(items) - limit} more)" if len(items) > limit else shown

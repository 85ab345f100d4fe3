"""Loading a PyTorch model for compression and saving the compressed one.

Loading reuses the torch frontend (the same flags and the same safety rules as
``edgekiln convert``), but only Python modules are accepted: pruning rewrites
``nn.Module`` layers, which a TorchScript or ``torch.export`` file no longer has.

Saving writes what ``edgekiln convert``/``build`` read: TorchScript (``.pt``,
traced, and the trace checked against eager on several inputs) or a
``torch.export`` program (``.pt2``). A state dict is refused: the pruned layers
no longer fit the original class's shapes.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import UsageError, first_line
from toolchain.fileio import atomic_file, check_writable_destination
from toolchain.lazy import require

SAVE_SUFFIXES = (".pt", ".pt2")
_TRACE_ATOL, _TRACE_RTOL = 1e-4, 1e-3
_PURPOSE = "Compressing a PyTorch model"


@dataclass
class LoadedModel:
    """An eager ``nn.Module`` in eval mode and a seeded example input of the declared shape."""

    module: Any
    example: Any
    source_format: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)


_PYTHON_MODEL_HINT = ("Give the architecture and weights (--model-class MODULE:CLASS --weights W.pth) or a pickled "
                      "nn.Module with --trust-pickle.")


def load_module(source: Path | None, *, inputs: tuple[str, ...] | list[str] = (), model_class: str | None = None,
                weights: Path | None = None, model_kwargs: dict | None = None,
                trust_pickle: bool = False) -> LoadedModel:
    """Load a Python ``nn.Module`` the way ``edgekiln convert`` does; TorchScript and .pt2 are refused."""
    torch = require("torch", _PURPOSE)
    from toolchain.frontends import detect_format
    from toolchain.frontends import torch_frontend as frontend
    from toolchain.frontends.base import ConvertOptions
    from toolchain.inputs import parse_input_specs

    options = ConvertOptions(inputs=tuple(parse_input_specs(list(inputs))), model_class=model_class,
                             weights=Path(weights) if weights else None, model_kwargs=dict(model_kwargs or {}),
                             trust_pickle=trust_pickle)
    kind = detect_format(Path(source) if source else None, options)
    if kind not in ("torch", "state-dict"):
        raise UsageError(f"compression needs the PyTorch model as Python code; '{source}' is not ({kind} format)",
                         hint=_PYTHON_MODEL_HINT)
    if kind == "state-dict":
        module, source_format = frontend._module_from_state_dict(torch, options.weights or source, options), kind
    else:
        module, source_format = frontend._load_torch_file(torch, source, options)
    if isinstance(module, torch.jit.ScriptModule):
        raise UsageError(f"'{Path(source).name}' is TorchScript, whose layers cannot be pruned or retrained here",
                         hint=_PYTHON_MODEL_HINT)
    specs = frontend._named_input_specs(options)
    if len(specs) != 1:
        raise UsageError(f"compression handles models with one image input; {len(specs)} --input options given")
    module.eval()
    example = frontend._example_tensor(torch, specs[0])
    frontend._output_names(torch, module, (example,))  # a one-line error if forward() fails on this shape
    return LoadedModel(module, example, source_format)



def check_output_path(output: Path) -> None:
    """Refuse, before any work, an output ``convert`` could not read back or a folder that cannot be written."""
    suffix = Path(output).suffix.lower()
    if suffix in (".pth", ".bin", ".safetensors"):
        raise UsageError(f"a pruned model cannot be saved as a state dict ('{Path(output).name}'): its layers no "
                         "longer have the original class's shapes",
                         hint="Save it as TorchScript (.pt) or a torch.export program (.pt2).")
    if suffix not in SAVE_SUFFIXES:
        raise UsageError(f"output '{Path(output).name}' must end in .pt (TorchScript) or .pt2 (torch.export)")
    check_writable_destination(Path(output))


def serializable(module: Any, example: Any, suffix: str) -> Any:
    """The TorchScript trace (``.pt``) or exported program (``.pt2``) of ``module``, or a one-line UsageError.

    The trace is compared with eager PyTorch on several inputs, so data-dependent control flow (which
    a trace silently freezes to one branch) is caught here rather than in a deployed model.
    """
    torch = require("torch", _PURPOSE)
    was_training = module.training
    module.eval()
    try:
        return _export_program(torch, module, example) if suffix == ".pt2" else _checked_trace(torch, module, example)
    finally:
        module.train(was_training)


def save_pruned(module: Any, example: Any, output: Path) -> Path:
    """Write ``module`` as TorchScript (``.pt``) or a ``torch.export`` program (``.pt2``), atomically."""
    torch = require("torch", _PURPOSE)
    output = Path(output)
    check_output_path(output)
    program = serializable(module, example, output.suffix.lower())
    with atomic_file(output) as tmp:
        if output.suffix.lower() == ".pt2":
            torch.export.save(program, str(tmp))
        else:
            torch.jit.save(program, str(tmp))
    return output


def _checked_trace(torch: Any, module: Any, example: Any) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", torch.jit.TracerWarning)
        try:
            with torch.no_grad():
                traced = torch.jit.trace(module, (example,), check_trace=False)
        except Exception as exc:  # tracing fails with many exception types (unsupported ops, non-tensor outputs)
            raise UsageError(f"the model cannot be traced to TorchScript: {first_line(exc)}",
                             hint="Save to .pt2 (torch.export) instead, or make forward() traceable.") from exc
    tracer_notes = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    for probe in _probe_inputs(torch, example):
        with torch.no_grad():
            expected, actual = module(probe), traced(probe)
        if not _same_outputs(torch, expected, actual):
            # torch's tracer warnings run to several sentences; the first names the cause.
            reason = tracer_notes[0].split(". ")[0] if tracer_notes else "the traced outputs differ from eager"
            raise UsageError(f"the model cannot be traced faithfully (data-dependent control flow?): {reason}",
                             hint="Remove Python branches on tensor values from forward().")
    return traced


def _export_program(torch: Any, module: Any, example: Any) -> Any:
    from toolchain.quiet import quiet

    try:
        # On failure torch.export prints the partial graph straight to sys.stderr, not to a logger.
        with quiet("torch.export", "torch._dynamo", "torch"), contextlib.redirect_stderr(io.StringIO()):
            return torch.export.export(module, (example,))
    except Exception as exc:  # torch.export raises many exception types for unsupported code
        raise UsageError(f"torch.export cannot export the model: {first_line(exc)}",
                         hint="Save to .pt (TorchScript trace) instead, or make forward() exportable.") from exc


def _probe_inputs(torch: Any, example: Any) -> list[Any]:
    """The example, its negation and two seeded draws: different enough to take different branches."""
    if not torch.is_floating_point(example):
        return [example]
    generator = torch.Generator().manual_seed(1234)
    return [example, -example, torch.rand(example.shape, generator=generator, dtype=example.dtype),
            torch.randn(example.shape, generator=generator, dtype=example.dtype) * 3]


def _same_outputs(torch: Any, expected: Any, actual: Any) -> bool:
    from toolchain.frontends.torch_frontend import _flatten_outputs

    left, right = _flatten_outputs(torch, expected), _flatten_outputs(torch, actual)
    return len(left) == len(right) and all(
        a.shape == b.shape and np.allclose(a.numpy(), b.numpy(), atol=_TRACE_ATOL, rtol=_TRACE_RTOL)
        for a, b in zip(left, right))

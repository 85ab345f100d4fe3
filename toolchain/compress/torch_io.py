"""Loading and saving the PyTorch modules that distillation and QAT train.

Loading reuses the ``convert`` frontend's loaders, so a teacher is read exactly as
``edgekiln convert`` reads it (TorchScript, a state dict plus its class, or a
pickled module only with ``trust_pickle``; not ``.pt2``, whose module cannot be
put in eval mode). Saving picks the format from the
suffix: ``.pt`` TorchScript (traced, then checked equal to eager on real images),
``.pt2`` a ``torch.export`` program, ``.pth`` a state dict for ``--model-class``.
Every file is written atomically.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import UsageError, first_line
from toolchain.fileio import atomic_file, check_writable_destination
from toolchain.lazy import require

SAVE_SUFFIXES = (".pt", ".pt2", ".pth")
_PURPOSE = "Training a PyTorch model"
# Traced and eager outputs must agree this closely on real images, else tracing lost control flow.
_TRACE_ATOL, _TRACE_RTOL = 1e-4, 1e-3
_TRACE_CHECK_IMAGES = 16


def parse_kwargs(value: str | dict | None, flag: str) -> dict:
    """Constructor keyword arguments given as a dict or a JSON object string."""
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(parsed, dict):
        raise UsageError(f"{flag} must be a JSON object such as '{{\"num_classes\": 10}}'")
    return parsed


def input_shape(inputs: Sequence[str]) -> tuple[int, ...]:
    """The one image input's concrete shape (batch 1) from ``--input [NAME:]SHAPE``."""
    from toolchain.inputs import parse_input_specs

    specs = parse_input_specs(list(inputs))
    if len(specs) != 1:
        raise UsageError("PyTorch models do not record their input shape; give exactly one --input",
                         hint="For example --input 1x3x224x224 (training here feeds one image input).")
    return specs[0].concrete_shape(batch=1)


def load_torch_module(source: Path | None, *, model_class: str | None = None, weights: Path | None = None,
                      model_kwargs: dict | None = None, trust_pickle: bool = False) -> Any:
    """A module in eval mode from a TorchScript or (trusted) pickle file, or a state dict plus its class."""
    torch = require("torch", _PURPOSE)
    from toolchain.frontends.base import ConvertOptions
    from toolchain.frontends.torch_frontend import _load_torch_file, _module_from_state_dict

    options = ConvertOptions(model_class=model_class, weights=Path(weights) if weights else None,
                             model_kwargs=dict(model_kwargs or {}), trust_pickle=trust_pickle)
    if model_class:
        weights_file = weights or source
        if weights_file is None:
            raise UsageError(f"{model_class} needs its weights: give a state-dict file")
        module = _module_from_state_dict(torch, Path(weights_file), options)
    elif source is None:
        raise UsageError("no model given: pass a model file, or a class with its weights")
    elif Path(source).suffix.lower() == ".pt2":
        # torch.export fixes train/eval behaviour at export time, and its module() refuses eval()/train(),
        # which training (teacher in eval mode, student switching modes) needs.
        raise UsageError(f"'{Path(source).name}' is a torch.export program, which cannot be switched between "
                         "training and eval mode",
                         hint="Give the TorchScript .pt, or the state dict with its class.")
    else:
        module, _format = _load_torch_file(torch, Path(source), options)
    return module.eval()


def build_module(model_class: str, *, weights: Path | None = None, model_kwargs: dict | None = None) -> Any:
    """A fresh instance of ``module:Class`` (with ``weights`` loaded when given), in eval mode."""
    from toolchain.frontends.torch_frontend import import_model_class

    if weights is not None:
        return load_torch_module(None, model_class=model_class, weights=weights, model_kwargs=model_kwargs)
    cls = import_model_class(model_class)
    try:
        module = cls(**dict(model_kwargs or {}))
    except TypeError as exc:
        raise UsageError(f"cannot construct {model_class} with {model_kwargs or {}}: {exc}") from exc
    torch = require("torch", _PURPOSE)
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"{model_class} is a {type(module).__name__}, not a torch.nn.Module")
    return module.eval()


def check_save_suffix(output: Path) -> None:
    if output.suffix.lower() not in SAVE_SUFFIXES:
        raise UsageError(f"output '{output.name}' must end in .pt (TorchScript), .pt2 (torch.export) "
                         "or .pth (state dict)")
    check_writable_destination(output)


def check_saveable(module: Any, example: np.ndarray, images: np.ndarray, output: Path) -> None:
    """Fail before training, not after it, when ``module`` cannot be saved in ``output``'s format."""
    suffix = output.suffix.lower()
    if suffix == ".pt":
        trace_checked(module, example, images)
    elif suffix == ".pt2":
        export_program(module, example)


def save_module(module: Any, example: np.ndarray, images: np.ndarray, output: Path) -> Path:
    """Write ``module`` to ``output`` in the format its suffix names, atomically."""
    torch = require("torch", _PURPOSE)
    check_save_suffix(output)
    module.eval()
    suffix = output.suffix.lower()
    payload = (trace_checked(module, example, images) if suffix == ".pt"
               else export_program(module, example) if suffix == ".pt2" else None)
    with atomic_file(output) as tmp:
        if suffix == ".pt":
            torch.jit.save(payload, str(tmp))
        elif suffix == ".pt2":
            buffer = io.BytesIO()  # torch.export.save warns about a file name not ending in .pt2 (the temp one)
            torch.export.save(payload, buffer)
            tmp.write_bytes(buffer.getvalue())
        else:
            torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, str(tmp))
    return output


def trace_checked(module: Any, example: np.ndarray, images: np.ndarray) -> Any:
    """``torch.jit.trace`` of ``module``, refused unless it matches eager on real images.

    The check runs at another batch size than the trace: data-dependent Python branches and
    shapes baked in as constants, the usual ways a trace silently differs, show up there.
    """
    torch = require("torch", _PURPOSE)
    from toolchain.compress.measure import predict_logits

    import warnings

    module.eval()
    try:
        # TracerWarnings are what the comparison below turns into a clear error (or shows harmless).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(module, torch.from_numpy(np.ascontiguousarray(example)), check_trace=False)
        check = images[:_TRACE_CHECK_IMAGES]
        eager, scripted = predict_logits(module, check), predict_logits(traced, check)
    except UsageError:
        raise
    except Exception as exc:  # tracing fails with many error types (unsupported ops, non-tensor outputs)
        raise UsageError(f"the student cannot be saved as TorchScript: tracing failed: {first_line(exc)}",
                         hint="Save as .pt2 or .pth instead, or make forward() traceable.") from exc
    if eager.shape != scripted.shape or not np.allclose(scripted, eager, atol=_TRACE_ATOL, rtol=_TRACE_RTOL):
        worst = float(np.max(np.abs(scripted - eager))) if eager.shape == scripted.shape else float("inf")
        raise UsageError(f"the student cannot be saved as TorchScript: its trace differs from eager PyTorch on "
                         f"real images (max error {worst:.3g}; data-dependent control flow?)",
                         hint="Save as .pth (state dict) instead, or remove the data-dependent branches.")
    return traced


def export_program(module: Any, example: np.ndarray) -> Any:
    torch = require("torch", _PURPOSE)
    from toolchain.quiet import quiet

    try:
        with quiet("torch.export", "torch._dynamo", "torch"):
            return torch.export.export(module.eval(), (torch.from_numpy(np.ascontiguousarray(example)),))
    except Exception as exc:  # export raises many error types for unsupported Python
        raise UsageError(f"the student cannot be saved as .pt2: torch.export failed: {first_line(exc)}",
                         hint="Save as .pt or .pth instead.") from exc

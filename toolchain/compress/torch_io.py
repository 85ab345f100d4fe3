"""Loading the PyTorch models that compression works on, and saving the compressed ones.

Loading reuses the torch frontend (the same flags and the same safety rules as
``edgekiln convert``): TorchScript, a state dict plus its class, or a pickled
module only with ``trust_pickle``. Not ``.pt2``: its module cannot be switched
between training and eval mode. Pruning and QAT rewrite ``nn.Module`` layers, so
they also refuse TorchScript (``allow_torchscript=False``); a distillation teacher
may be TorchScript.

Saving picks the format from the suffix: ``.pt`` TorchScript (traced, and the
trace checked against eager PyTorch), ``.pt2`` a ``torch.export`` program, ``.pth``
a state dict for ``--model-class``. A pruned model refuses ``.pth``
(``allow_state_dict=False``): its layers no longer fit the original class's
shapes. Every file is written atomically, and every check can run before the slow
work (``check_save_suffix``, ``check_saveable``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import UsageError, clip, first_line
from toolchain.fileio import atomic_file, check_writable_destination
from toolchain.lazy import require

SAVE_SUFFIXES = (".pt", ".pt2", ".pth")
STATE_DICT_SUFFIXES = (".pth", ".bin", ".safetensors")
_FORMATS = {".pt": "TorchScript", ".pt2": "torch.export", ".pth": "state dict"}
_PURPOSE = "Compressing a PyTorch model"
# Traced and eager outputs must agree this closely, else tracing lost control flow.
_TRACE_ATOL, _TRACE_RTOL = 1e-4, 1e-3
_TRACE_CHECK_IMAGES = 16
_PYTHON_MODEL_HINT = ("Give the architecture and weights (--model-class MODULE:CLASS --weights W.pth) or a pickled "
                      "nn.Module with --trust-pickle.")


# --- loading ------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """An eager ``nn.Module`` in eval mode and a seeded example input of the declared shape."""

    module: Any
    example: Any
    source_format: str

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.example.shape)


def input_spec(inputs: Sequence[str]) -> Any:
    """The one image input's ``InputSpec`` from ``--input [NAME:]SHAPE[:DTYPE]``: compression feeds one input."""
    from toolchain.inputs import parse_input_specs

    specs = parse_input_specs(list(inputs))
    if not specs:
        raise UsageError("PyTorch models do not record their input shape; give exactly one --input",
                         hint="For example --input 1x3x224x224 (compression feeds one image input).")
    if len(specs) > 1:
        raise UsageError(f"compression handles models with one image input; {len(specs)} --input options given")
    return specs[0]


def input_shape(inputs: Sequence[str]) -> tuple[int, ...]:
    """The one image input's concrete shape (batch 1) from ``--input [NAME:]SHAPE``."""
    return input_spec(inputs).concrete_shape(batch=1)


def load_torch_module(source: Path | None, *, model_class: str | None = None, weights: Path | None = None,
                      model_kwargs: dict | None = None, trust_pickle: bool = False,
                      allow_torchscript: bool = True) -> Any:
    """A module in eval mode from a TorchScript or (trusted) pickle file, or a state dict plus its class.

    ``allow_torchscript`` False refuses TorchScript, for steps that rewrite the module's layers.
    """
    return _load(source, model_class, weights, model_kwargs, trust_pickle, allow_torchscript)[0]


def load_module(source: Path | None, *, inputs: Sequence[str] = (), model_class: str | None = None,
                weights: Path | None = None, model_kwargs: dict | None = None,
                trust_pickle: bool = False) -> LoadedModel:
    """A Python ``nn.Module`` (TorchScript refused) and a seeded example of its one ``--input``, checked to run."""
    torch = require("torch", _PURPOSE)
    from toolchain.compress.measure import output_shape
    from toolchain.frontends.torch_frontend import example_tensor

    module, source_format = _load(source, model_class, weights, model_kwargs, trust_pickle, allow_torchscript=False)
    example = example_tensor(torch, input_spec(inputs))
    output_shape(module, example.numpy(), hint="Check the --input shape and dtype.")  # forward() fails in one line
    return LoadedModel(module, example, source_format)


def _load(source: Path | None, model_class: str | None, weights: Path | None, model_kwargs: dict | None,
          trust_pickle: bool, allow_torchscript: bool) -> tuple[Any, str]:
    torch = require("torch", _PURPOSE)
    from toolchain.frontends import detect_format
    from toolchain.frontends.base import ConvertOptions
    from toolchain.frontends.torch_frontend import load_torch_file, module_from_state_dict

    source = Path(source) if source else None
    options = ConvertOptions(model_class=model_class, weights=Path(weights) if weights else None,
                             model_kwargs=dict(model_kwargs or {}), trust_pickle=trust_pickle)
    kind = detect_format(source, options)
    if kind not in ("torch", "state-dict"):
        raise _unusable(source, kind, allow_torchscript)
    if kind == "state-dict":
        module, source_format = module_from_state_dict(torch, options.weights or source, options), kind
    else:
        module, source_format = load_torch_file(torch, source, options)
    if not allow_torchscript and isinstance(module, torch.jit.ScriptModule):
        raise UsageError(f"compression needs the model as Python code: '{source.name}' is TorchScript, whose "
                         "layers cannot be pruned or fake-quantized", hint=_PYTHON_MODEL_HINT)
    return module.eval(), source_format


def _unusable(source: Path, kind: str, allow_torchscript: bool) -> UsageError:
    """Why a file of format ``kind`` (not a PyTorch module file) cannot be loaded."""
    if not allow_torchscript:
        return UsageError(f"compression needs the PyTorch model as Python code; '{source}' is not ({kind} format)",
                          hint=_PYTHON_MODEL_HINT)
    if kind == "torch-export":
        # torch.export fixes train/eval behaviour at export time, and its module() refuses eval()/train(),
        # which training (teacher in eval mode, student switching modes) needs.
        return UsageError(f"'{source.name}' is a torch.export program, which cannot be switched between "
                          "training and eval mode", hint="Give the TorchScript .pt, or the state dict with its class.")
    return UsageError(f"'{source.name}' is not a PyTorch model ({kind} format)",
                      hint="Give a TorchScript .pt, or the state dict with its class.")


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


# --- saving -------------------------------------------------------------------------------------


def check_save_suffix(output: Path, *, allow_state_dict: bool = True) -> None:
    """Refuse, before any work, an output ``convert`` could not read back or a folder that cannot be written."""
    output = Path(output)
    suffix = output.suffix.lower()
    if not allow_state_dict and suffix in STATE_DICT_SUFFIXES:
        raise UsageError(f"a pruned model cannot be saved as a state dict ('{output.name}'): its layers no "
                         "longer have the original class's shapes",
                         hint="Save it as TorchScript (.pt) or a torch.export program (.pt2).")
    allowed = _suffixes(allow_state_dict)
    if suffix not in allowed:
        names = [f"{s} ({_FORMATS[s]})" for s in allowed]
        raise UsageError(f"output '{output.name}' must end in {', '.join(names[:-1])} or {names[-1]}")
    check_writable_destination(output)


def check_saveable(module: Any, example: Any, images: np.ndarray | None, output: Path, *,
                   allow_state_dict: bool = True) -> None:
    """Fail before training, not after it, when ``module`` cannot be saved in ``output``'s format."""
    _payload(module, example, images, Path(output).suffix.lower(), allow_state_dict)


def save_module(module: Any, example: Any, images: np.ndarray | None, output: Path, *,
                allow_state_dict: bool = True) -> Path:
    """Write ``module`` to ``output`` in the format its suffix names, atomically.

    ``example`` (one input, a tensor or an array) is traced or exported; ``images`` (real inputs, may be
    None) are what a ``.pt`` trace is also checked on.
    """
    torch = require("torch", _PURPOSE)
    output = Path(output)
    check_save_suffix(output, allow_state_dict=allow_state_dict)
    suffix = output.suffix.lower()
    payload = _payload(module, example, images, suffix, allow_state_dict)
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


def _payload(module: Any, example: Any, images: np.ndarray | None, suffix: str, allow_state_dict: bool) -> Any:
    """The checked trace (``.pt``) or exported program (``.pt2``) of ``module``; None for a state dict."""
    if suffix == ".pt":
        return trace_checked(module, example, images, allow_state_dict=allow_state_dict)
    if suffix == ".pt2":
        return export_program(module, example, allow_state_dict=allow_state_dict)
    return None


def trace_checked(module: Any, example: Any, images: np.ndarray | None = None, *,
                  allow_state_dict: bool = True) -> Any:
    """``torch.jit.trace`` of ``module`` on ``example``, refused in one line unless it matches eager PyTorch.

    A trace silently freezes data-dependent Python branches and may bake shapes in as constants, so it
    is compared with eager on the example, its negation and two seeded random draws (different enough to
    take other branches), and at another batch size: on up to 16 of ``images`` when given.
    """
    torch = require("torch", _PURPOSE)
    example = _as_tensor(torch, example)
    with _eval_mode(module):
        with warnings.catch_warnings(record=True) as caught:
            # TracerWarnings are what the comparison below turns into a clear error (or shows harmless).
            warnings.simplefilter("always", torch.jit.TracerWarning)
            try:
                with torch.no_grad():
                    traced = torch.jit.trace(module, (example,), check_trace=False)
            except Exception as exc:  # tracing fails with many exception types (unsupported ops, non-tensor outputs)
                raise UsageError(f"the model cannot be saved as TorchScript: tracing failed: {first_line(exc)}",
                                 hint=f"Save as {_others('.pt', allow_state_dict)} instead, or make forward() "
                                      "traceable.") from exc
        tracer_notes = [str(w.message) for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
        for what, probe in _probe_inputs(torch, example, images):
            difference = _trace_difference(torch, module, traced, probe)
            if difference is None:
                continue
            cause = ("data-dependent control flow?" if len(probe) == len(example)
                     else "a batch size fixed in the trace, or data-dependent control flow?")
            if tracer_notes:  # torch's tracer warnings run to several sentences; the first names the cause
                cause += f" torch warned: {tracer_notes[0].splitlines()[0].split('. ')[0]}"
            fix = "remove the Python branches and sizes computed from tensor values from forward()"
            raise UsageError(f"the model cannot be saved as TorchScript: it cannot be traced faithfully: on {what} "
                             f"the trace {difference} ({cause})",
                             hint=f"Save as .pth (state dict) instead, or {fix}." if allow_state_dict
                             else f"{fix[0].upper()}{fix[1:]}.")
    return traced


def export_program(module: Any, example: Any, *, allow_state_dict: bool = True) -> Any:
    """``torch.export.export`` of ``module`` on ``example``, or a one-line UsageError."""
    torch = require("torch", _PURPOSE)
    from toolchain.quiet import quiet

    example = _as_tensor(torch, example)
    with _eval_mode(module):
        try:
            # On failure torch.export prints the partial graph straight to sys.stderr, not to a logger.
            with quiet("torch.export", "torch._dynamo", "torch"), contextlib.redirect_stderr(io.StringIO()):
                return torch.export.export(module, (example,))
        except Exception as exc:  # torch.export raises many exception types for unsupported code
            raise UsageError(f"the model cannot be saved as .pt2: torch.export failed: {first_line(exc)}",
                             hint=f"Save as {_others('.pt2', allow_state_dict)} instead, or make forward() "
                                  "exportable.") from exc


def _suffixes(allow_state_dict: bool) -> tuple[str, ...]:
    return SAVE_SUFFIXES if allow_state_dict else tuple(s for s in SAVE_SUFFIXES if s not in STATE_DICT_SUFFIXES)


def _others(suffix: str, allow_state_dict: bool) -> str:
    return " or ".join(s for s in _suffixes(allow_state_dict) if s != suffix)


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _as_tensor(torch: Any, example: Any) -> Any:
    return example if isinstance(example, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(example))


def _probe_inputs(torch: Any, example: Any, images: np.ndarray | None) -> list[tuple[str, Any]]:
    """(what, input) pairs a faithful trace reproduces; the last has another batch size than ``example``."""
    probes = [("the example input", example)]
    if torch.is_floating_point(example):
        generator = torch.Generator().manual_seed(1234)
        probes += [("the negated example", -example),
                   ("a uniform random input", torch.rand(example.shape, generator=generator, dtype=example.dtype)),
                   ("a normal random input",
                    torch.randn(example.shape, generator=generator, dtype=example.dtype) * 3)]
    if images is not None and len(images[:_TRACE_CHECK_IMAGES]) != len(example):
        real = _as_tensor(torch, images[:_TRACE_CHECK_IMAGES])
        return [*probes, (f"{len(real)} real images", real)]
    batch = torch.cat([p for _, p in probes] * (2 if len(probes) == 1 else 1))
    return [*probes, (f"a batch of {len(batch)} inputs", batch)]


def _trace_difference(torch: Any, module: Any, traced: Any, probe: Any) -> str | None:
    """What differs between ``traced`` and eager ``module`` on ``probe``; None when they agree.

    An input the eager module itself cannot run (say a batch size it does not support) checks nothing.
    """
    from toolchain.frontends.torch_frontend import flatten_outputs

    with torch.no_grad():
        try:
            expected = flatten_outputs(torch, module(probe))
        except Exception:  # the user's forward() does not take this input: nothing to compare with
            return None
        try:
            actual = flatten_outputs(torch, traced(probe))
        except Exception as exc:  # e.g. a batch size baked into the trace
            # The TorchScript interpreter's message ends with the cause, after its own traceback.
            lines = [line for line in str(exc).splitlines() if line.strip()]
            return f"fails: {clip(lines[-1]) if lines else type(exc).__name__}"
    if len(actual) != len(expected) or any(a.shape != e.shape for a, e in zip(actual, expected)):
        return "returns outputs of other shapes than eager PyTorch"
    if all(np.allclose(a.numpy(), e.numpy(), atol=_TRACE_ATOL, rtol=_TRACE_RTOL) for a, e in zip(actual, expected)):
        return None
    worst = max(float((a.double() - e.double()).abs().max()) for a, e in zip(actual, expected) if e.numel())
    return f"differs from eager PyTorch by up to {worst:.3g}"

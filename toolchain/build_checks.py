"""What a build checks before any stage runs: each variant's needs, the sample split, and whether the
model's input can take the samples.

Everything here is cheap (file listings, ONNX headers, one sample), so a build that cannot succeed
fails in a second with one line, and ``--dry-run`` reports the same problems. Where the model's
input is only known after conversion (Keras, SavedModel, ``.pt2`` without ``--input``), the input
checks run right after the convert stage, still before any variant is compiled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.errors import UsageError
from toolchain.onnx_io import TensorInfo
from toolchain.targets import Variant

# An INT8 model needs at least one byte of flash per weight. Above this the MCU variant is built
# but will not fit a microcontroller: 2 MiB is the internal flash of large Cortex-M7 parts (STM32H743).
MCU_FLASH_BYTES = 2 * 1024 * 1024

_FLOAT_TYPES = (1, 10, 11, 16)  # onnx.TensorProto FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass
class Checked:
    """What the checks decided: the sample split every stage uses, and lines to tell the user."""

    split: Any | None = None
    """``calibration.dataset.SampleSplit`` when a stage calibrates, else None."""
    notes: list[str] = field(default_factory=list)
    inputs_checked: bool = False
    """False when the model's inputs are only known after conversion (see ``check_converted``)."""


def spelled(variant: Variant) -> str:
    """The variant as the user writes it on the command line (``rpi4``, ``x86:int8``)."""
    if variant.precision == variant.target.precision:
        return variant.target.name
    return f"{variant.target.name}:{variant.precision}"


def _quoted(variants: list[Variant]) -> str:
    return ", ".join(f"'{spelled(v)}'" for v in variants)


def _int8_variants(request: Any) -> list[Variant]:
    return [v for v in request.variants if v.precision == "int8"]


def _uses_split(request: Any) -> bool:
    """Whether some stage draws calibration/held-out samples (and so needs a valid split)."""
    from calibration.dataset import is_array_source

    if request.calib is None:
        return False
    tensorrt_arrays = any(v.target.backend == "tensorrt" for v in request.variants) and is_array_source(request.calib)
    return bool(_int8_variants(request)) or request.reads_samples or tensorrt_arrays


def check_request(request: Any) -> tuple[Any, Checked]:
    """Check ``request`` (a ``BuildRequest``) before anything runs; return it with the split filled in.

    Raises a ``ToolchainError`` naming the target, option or file at fault.
    """
    _check_variant_needs(request)
    for config in request.passes.values():
        if config is not None:
            config.check_samples(request.calib is not None)
    checked = Checked()
    if _uses_split(request):
        checked.split = _resolve_split(request)
        samples = request.samples.model_copy(update={"calib_size": checked.split.count,
                                                     "holdout": checked.split.holdout})
        request = replace(request, samples=samples)
        where = f"{request.calib.name}/" if request.calib.is_dir() else request.calib.name
        checked.notes.append(checked.split.describe(where))
        _check_not_identical(request)
    inputs = planned_inputs(request)
    if inputs is not None:
        checked.notes += check_inputs(request, inputs)
        checked.notes += mcu_size_notes(request, _weights_of_source(request))
        checked.inputs_checked = True
    return request, checked


def check_converted(request: Any, model_path: Path) -> list[str]:
    """The input checks for a model whose inputs were unknown before conversion (run after convert)."""
    import onnx

    from toolchain.onnx_io import graph_inputs

    model = onnx.load(str(model_path), load_external_data=False)  # shapes and weight dims only
    return check_inputs(request, graph_inputs(model)) + mcu_size_notes(request, weight_count(model))


# ---- each variant's needs --------------------------------------------------------------------


def _check_variant_needs(request: Any) -> None:
    int8 = _int8_variants(request)
    if int8 and request.calib is None:
        by_default = [v for v in int8 if v.precision == v.target.precision]
        why = " (its default precision)" if len(int8) == 1 and by_default else ""
        subject = f"target {_quoted(int8)} builds INT8{why}" if len(int8) == 1 else \
            f"targets {_quoted(int8)} build INT8"
        raise UsageError(f"{subject}, which needs calibration samples",
                         hint="Pass --calib DIR (sample images like those the model will see, or .npy/.npz "
                              "samples), or leave that target out.")


def _pass_flags(request: Any) -> str:
    from toolchain.passes.registry import pass_entry

    return ", ".join(pass_entry(name).flag for name in request.passes if pass_entry(name).reads_samples)


# ---- the sample split ------------------------------------------------------------------------


def _resolve_split(request: Any) -> Any:
    from calibration.dataset import available_samples, choose_split, is_array_source

    samples = request.samples
    available, kind = available_samples(request.calib)
    split = choose_split(available, samples.calib_size, samples.holdout, source=request.calib, kind=kind,
                         npy_folder=request.calib.is_dir() and is_array_source(request.calib))
    guarded = _int8_variants(request) if request.quant.guard else []
    if guarded and split.holdout == 0:
        raise UsageError(f"the accuracy guard of {_quoted(guarded)} needs held-out samples, but --calib-size "
                         f"{split.count} uses all {available} {kind} of '{request.calib}'",
                         hint="Lower --calib-size, add samples, or pass --no-guard.")
    return split


def _check_not_identical(request: Any) -> None:
    """A folder of byte-identical files (a copied placeholder, one photo saved N times) is refused now.

    Sizes are compared first, so a normal folder costs one stat per file; images that differ in bytes
    but not in pixels are caught when the set is decoded (``calibration.dataset.check_varied``).
    """
    from calibration.dataset import is_array_source
    from calibration.folder import list_images
    from toolchain.errors import InputFileError
    from toolchain.fileio import sha256_file

    if is_array_source(request.calib):
        return
    files = list_images(request.calib).files
    if len(files) < 2 or len({f.stat().st_size for f in files}) > 1:
        return
    if len({sha256_file(f) for f in files}) == 1:
        raise InputFileError(f"all {len(files)} images in '{request.calib}' are identical files; calibrating and "
                             "checking accuracy on copies of one image is meaningless",
                             hint="Use varied, representative images of what the model will see.")


# ---- the model's inputs ----------------------------------------------------------------------


def planned_inputs(request: Any) -> list[TensorInfo] | None:
    """The converted model's inputs as far as they are known before converting, else None.

    ONNX sources: read from the file (with ``--input`` and ``--dynamic-batch`` applied as convert
    applies them). PyTorch sources: from ``--input``, which they need. Other sources: None.
    """
    from toolchain.inputs import parse_input_specs

    options = request.source_settings
    specs = parse_input_specs(list(options.inputs))
    kind = source_kind(request)
    if kind == "onnx":
        inputs = _onnx_inputs(request.source, specs)
    elif kind in ("torch", "state-dict", "torch-export") and specs:
        inputs = [TensorInfo(s.name or "input", tuple(s.shape), s.numpy_dtype) for s in specs]
    else:
        return None
    if options.dynamic_batch:
        inputs = [replace(i, shape=("batch", *i.shape[1:])) if i.shape else i for i in inputs]
    return inputs


def source_kind(request: Any) -> str:
    """The source's format as ``toolchain.frontends.detect_format`` names it (the example is a state dict)."""
    from toolchain.frontends import detect_format
    from toolchain.frontends.base import ConvertOptions

    options = request.source_settings
    if request.source is None and options.model_class is None:
        return "state-dict"  # the bundled example: a model class with --input
    probe = ConvertOptions(model_class=options.model_class, weights=Path(options.weights) if options.weights else None)
    return detect_format(request.source, probe)


def _onnx_inputs(path: Path, specs: list[Any]) -> list[TensorInfo]:
    import onnx

    from toolchain.onnx_io import graph_inputs

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - convert reports an unreadable model with its own message
        return []
    inputs = graph_inputs(model)
    named = {s.name: s for s in specs if s.name}
    unnamed = [s for s in specs if not s.name]
    for index, info in enumerate(inputs):
        spec = named.get(info.name) or (unnamed[0] if unnamed and len(inputs) == 1 else None)
        if spec is not None and len(spec.shape) == len(info.shape):
            inputs[index] = replace(info, shape=tuple(spec.shape))
    return inputs


def _shape_text(shape: tuple[Any, ...]) -> str:
    return "x".join(str(d) for d in shape) or "scalar"


def check_inputs(request: Any, inputs: list[TensorInfo]) -> list[str]:
    """Refuse samples the model cannot take; return the preprocessing line to announce, if inferred."""
    if not inputs or request.calib is None:
        return []
    calibrating = _int8_variants(request) + ([] if not request.reads_samples else [None])
    names = ", ".join(f"'{i.name}'" for i in inputs)
    if len(inputs) != 1:
        if calibrating:
            who = _quoted([v for v in calibrating if v is not None]) or _pass_flags(request)
            raise UsageError(f"calibration feeds one input, and this model has {len(inputs)} ({names}): {who} "
                             "cannot be calibrated", hint="Build those targets at fp32/fp16, or export a "
                                                          "single-input model.")
        return []
    info = inputs[0]
    batch = info.shape[0] if info.shape else None
    if calibrating and isinstance(batch, int) and batch > 1:
        who = _quoted([v for v in calibrating if v is not None]) or _pass_flags(request)
        # An ONNX model cannot be given a symbolic batch here: its fixed-batch original could not verify it.
        fix = "Re-export the model with batch 1 or a dynamic batch axis" if source_kind(request) == "onnx" else \
            "Give --input with batch 1, or pass --dynamic-batch"
        raise UsageError(f"input '{info.name}' has a fixed batch of {batch} ({_shape_text(info.shape)}), but "
                         f"calibration for {who} feeds one sample at a time", hint=f"{fix}.")
    from calibration.dataset import is_array_source

    if is_array_source(request.calib):
        if calibrating:
            _check_array_samples(request.calib, info)
        return []
    from toolchain.feeds import resolve_preprocess

    spec = resolve_preprocess(request.verify.preprocess, info)  # a non-image or unsized input fails here
    if request.verify.preprocess is not None:
        return []
    return [f"preprocessing inferred from input '{info.name}' ({_shape_text(info.shape)}): {spec.describe()}; "
            "pass --preprocess (imagenet, yolo, raw01, raw255, gray01) if the model was trained otherwise"]


def _check_array_samples(source: Path, info: TensorInfo) -> None:
    from calibration.dataset import build_calibration_set

    sample = build_calibration_set(source, None, count=1, holdout=0).calibration
    expected = info.shape[1:]
    if len(sample.shape[1:]) != len(expected) or any(
            isinstance(want, int) and want != got for want, got in zip(expected, sample.shape[1:])):
        raise UsageError(f"the samples in '{source.name}' have shape {_shape_text(tuple(sample.shape[1:]))} but "
                         f"input '{info.name}' expects {_shape_text(tuple(expected))} (after the batch axis)",
                         hint="Save samples as (N, ...) with the model's input shape after the batch axis.")


# ---- microcontroller size --------------------------------------------------------------------


def weight_count(model: Any) -> int:
    """Float weights in an ONNX model (initializers, external data included: only their dims are read)."""
    return sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in _FLOAT_TYPES)


def _weights_of_source(request: Any) -> int | None:
    from toolchain.frontends import ONNX_SUFFIXES

    source = request.source
    if source is None or source.suffix.lower() not in ONNX_SUFFIXES or not source.is_file():
        return None
    import onnx

    try:
        return weight_count(onnx.load(str(source), load_external_data=False))
    except Exception:  # noqa: BLE001 - convert reports an unreadable model with its own message
        return None


def mcu_too_large(weights: int, flash_kb: float | None = None) -> str | None:
    """Why a model with ``weights`` float weights cannot fit a microcontroller (None when it may)."""
    estimate = weights  # INT8: one byte per weight at least, before the flatbuffer's own overhead
    limit = flash_kb * 1024 if flash_kb is not None else MCU_FLASH_BYTES
    if estimate <= limit:
        return None
    budget = f"--flash-kb {flash_kb:g}" if flash_kb is not None else \
        f"the {MCU_FLASH_BYTES // 1024 // 1024} MiB of flash of even large microcontrollers (e.g. STM32H743)"
    return (f"the model has {weights / 1e6:.2f} M weights, at least {estimate / 1024 / 1024:.2f} MiB as INT8, "
            f"more than {budget}")


def mcu_size_notes(request: Any, weights: int | None) -> list[str]:
    if weights is None or not any(v.target.name == "mcu" for v in request.variants):
        return []
    problem = mcu_too_large(weights)
    return [f"warning: target 'mcu': {problem}; it will be built but is unlikely to fit a device"] if problem else []

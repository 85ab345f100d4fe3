"""The stage commands: typed option groups (``toolchain.settings``) turned into the stages' configs, then run.

``convert``, ``optimize``, ``calibrate`` and ``compile`` live here, in the pipeline, so that the build's steps
call them without going through the public API (``toolchain.api`` parses keywords into the groups and calls
these; the import graph runs one way: face -> pipeline -> backends -> passes -> calibration -> core).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from toolchain.errors import UsageError
from toolchain.settings import DEFAULT_MIN_COSINE, QuantSettings, SampleSettings, SourceSettings, VerifySettings
from toolchain.verify import VerifyOptions

PathLike = str | Path


def verify_options(settings: VerifySettings, min_cosine: float | None = None) -> VerifyOptions:
    """The pipeline's checks from the verification settings (``min_cosine``: the lossy passes' floor)."""
    preprocess = settings.preprocess
    if isinstance(preprocess, str):
        from calibration.spec import PRESETS

        if preprocess not in PRESETS:
            raise UsageError(f"unknown preprocessing preset '{preprocess}'; known: {', '.join(PRESETS)}")
    options = VerifyOptions(enabled=settings.verify, atol=settings.atol, rtol=settings.rtol, calib=settings.calib,
                            seed=settings.seed, preprocess=preprocess)
    return options if min_cosine is None else replace(options, min_cosine=min_cosine)


def convert(source: PathLike | None, output: PathLike, *, target: str | None = None,
            settings: SourceSettings = SourceSettings(), verify: VerifySettings = VerifySettings()):
    """``edgekiln convert``: ingest a PyTorch, TensorFlow or ONNX model into verified ONNX."""
    from toolchain.frontends.base import ConvertOptions
    from toolchain.inputs import parse_input_specs, parse_kwargs
    from backends.registry import find_target
    from toolchain.stages import convert as run_convert

    opset = settings.opset
    if opset is None and target is not None:
        opset = find_target(target).opset
    options = ConvertOptions(inputs=tuple(parse_input_specs(list(settings.inputs))),
                             dynamic_batch=settings.dynamic_batch, opset=opset, model_class=settings.model_class,
                             weights=settings.weights, model_kwargs=parse_kwargs(settings.model_kwargs),
                             trust_pickle=settings.trust_pickle, trust_savedmodel=settings.trust_savedmodel,
                             exporter=settings.exporter,
                             keras_safe_mode=settings.keras_safe_mode)
    return run_convert(Path(source) if source else None, Path(output), options, verify_options(verify))


def calibration_options(verify: VerifySettings, samples: SampleSettings):
    """Where the calibration samples come from (None without --calib) and how many are drawn."""
    from toolchain.passes.calibrate import CalibrationOptions, calibration_cache_dir

    if verify.calib is None:
        return None
    return CalibrationOptions(Path(verify.calib), count=samples.calib_size, holdout=samples.holdout,
                              seed=verify.seed, preprocess=verify.preprocess,
                              cache_dir=calibration_cache_dir(samples.cache_dir, samples.no_cache))


def optimize(model: PathLike, output: PathLike, *, passes: dict[str, Any], verify: VerifySettings = VerifySettings(),
             samples: SampleSettings = SampleSettings(), min_cosine: float = DEFAULT_MIN_COSINE):
    """``edgekiln optimize``: the passes named in ``passes`` (name -> its config, or None for a pass without
    settings; ``toolchain.passes.registry``), in the table's order, re-verified in ONNX Runtime."""
    from toolchain.passes.registry import pass_entry
    from toolchain.stages import optimize as run_optimize

    calibration = calibration_options(verify, samples) if any(
        pass_entry(name).reads_samples for name in passes) else None
    return run_optimize(Path(model), Path(output), passes=passes, calibration=calibration,
                        verify=verify_options(verify, min_cosine))


def backend_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """The backend-specific options the user set, each checked to belong to ``backend``."""
    from backends.registry import backend_option_owners

    owners = backend_option_owners()
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    for key in given:
        owner = owners.get(key)
        if owner is None:
            raise UsageError(f"unknown backend option '{key}'")
        if owner != backend:
            raise UsageError(f"--{key.replace('_', '-')} applies to the {owner} backend, not {backend}")
    return given


def quant_options(verify: VerifySettings, samples: SampleSettings, quant: QuantSettings):
    """INT8's samples, the quantizer settings the user chose (the rest come from the target) and the budget."""
    from toolchain.precision import QuantOptions
    from toolchain.quant_guard import Budget

    overrides = {k: v for k, v in {"method": quant.method, "per_channel": quant.per_channel,
                                   "activation_type": quant.activation_type,
                                   "activation_symmetric": quant.symmetric, "equalize": quant.equalize,
                                   "range_search": quant.range_search, "bias_correction": quant.bias_correction,
                                   "weight_rounding": quant.weight_rounding}.items() if v is not None}
    budget = Budget(quant.max_drop, quant.min_cosine, task=quant.task) if quant.guard else None
    return QuantOptions(calibration_options(verify, samples), overrides, budget)


def calibrate(model: PathLike, output: PathLike, *, target: str | None = None,
              verify: VerifySettings = VerifySettings(), samples: SampleSettings = SampleSettings(),
              quant: QuantSettings = QuantSettings(), tensorrt_cache: PathLike | None = None,
              tensorrt_version: str = "8201"):
    """``edgekiln calibrate``: static INT8 from sample images, with the accuracy guard."""
    from backends.registry import find_target
    from toolchain.fileio import check_writable_destination, refuse_clobbering
    from toolchain.passes.calibrate import calibrate as run_calibrate
    from toolchain.passes.quantize import QuantizeConfig

    if verify.calib is None:
        raise UsageError("calibrate needs --calib, a folder of sample images (or .npy/.npz samples)")
    options = quant_options(verify, samples, quant)
    profile = find_target(target) if target else None  # an unknown target fails before any work
    config = QuantizeConfig.for_target(profile, **options.overrides)
    for destination in (output, tensorrt_cache):
        if destination is not None:
            check_writable_destination(Path(destination))
            refuse_clobbering(Path(destination), {"the source model": Path(model), "the --calib folder": verify.calib})
    _check_split(options)
    return run_calibrate(Path(model), Path(output), options.calibration, config, options.budget,
                         Path(tensorrt_cache) if tensorrt_cache else None, tensorrt_version)


def compile(model: PathLike, output: PathLike, *, backend: str | None = None, target: str | None = None,  # noqa: A001
            precision: str | None = None, threads: int | None = None, graph_optimization: str = "all",
            verify: VerifySettings = VerifySettings(), samples: SampleSettings = SampleSettings(),
            quant: QuantSettings = QuantSettings(), backend_settings: dict[str, Any] | None = None):
    """``edgekiln compile``: lower an ONNX model to a backend artifact folder, verified against ONNX Runtime.

    ``backend_settings`` are backend-specific (each backend's ``options`` group), e.g. ``{"dla_core": 0}``.
    """
    from backends.base import CompileOptions
    from backends.registry import find_target
    from toolchain.stages import compile_artifact

    profile = find_target(target) if target else None
    backend = backend or (profile.backend if profile else "onnxruntime")
    if profile and profile.backend != backend:
        raise UsageError(f"target '{target}' uses the {profile.backend} backend, not {backend}")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be >= 1")
    precision = precision or (profile.precision if profile else "fp32")
    extra = {"graph_optimization": graph_optimization, **backend_options(backend, backend_settings or {})}
    if profile is not None and profile.name == "mcu":
        _check_mcu_size(Path(model), extra.get("flash_kb"))
    options = CompileOptions(precision=precision, target=target, threads=threads, extra=extra, verify=verify.verify)
    quantization = quant_options(verify, samples, quant)
    if precision == "int8":
        _check_split(quantization)
    checks = verify_options(verify, quant.min_cosine)
    return compile_artifact(Path(model), Path(output), backend, options, checks, quant=quantization)


def _check_split(quant: Any) -> None:
    """The calibration/holdout sizes against the folder, before any conversion (TFLite's takes minutes)."""
    from calibration.dataset import available_samples, choose_split, is_array_source

    calibration = quant.calibration
    if calibration is None or not calibration.source.exists():
        return  # compile asks for --calib, or says the folder is missing, in its own words
    available, kind = available_samples(calibration.source)
    split = choose_split(available, calibration.count, calibration.holdout, source=calibration.source, kind=kind,
                         npy_folder=calibration.source.is_dir() and is_array_source(calibration.source))
    if quant.budget is not None and split.holdout == 0:
        raise UsageError(f"the accuracy guard needs held-out samples, but --calib-size {split.count} uses all "
                         f"{available} {kind} of '{calibration.source}'",
                         hint="Lower --calib-size, add samples, or pass --no-guard.")


def _check_mcu_size(model: Path, flash_kb: float | None) -> None:
    """A model far too large for a microcontroller: refused before converting when it exceeds --flash-kb,
    else said on the progress log (the conversion would take minutes only to produce something unusable)."""
    import logging

    import onnx

    from toolchain.build_checks import mcu_too_large, weight_count

    if not model.is_file() or isinstance(flash_kb, bool) or not isinstance(flash_kb, (int, float, type(None))):
        return  # the compile itself reports a missing model or a malformed budget
    try:
        weights = weight_count(onnx.load(str(model), load_external_data=False))
    except Exception:  # noqa: BLE001 - an unreadable model gets the compile's own message
        return
    problem = mcu_too_large(weights, flash_kb)
    if problem is None:
        return
    if flash_kb is not None:
        raise UsageError(f"target 'mcu': {problem}", hint="Nothing was converted. Use a smaller model or raise "
                                                          "--flash-kb.")
    logging.getLogger("edgekiln").info("warning: target 'mcu': %s; it will be built but is unlikely to fit a "
                                       "device", problem)

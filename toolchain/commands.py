"""The commands that turn one stage's keyword arguments into typed configs and run it.

``convert``, ``optimize``, ``calibrate`` and ``compile`` live here, in the pipeline, so that the build's steps
call them without going through the public API (``toolchain.api`` re-exports them; the import graph runs one
way: face -> pipeline -> backends -> passes -> calibration -> core).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from toolchain.errors import UsageError
from toolchain.passes.lowrank_options import lowrank_config
from toolchain.verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyOptions

PathLike = str | Path


def verify_options(verify: bool, atol: float, rtol: float, calib: PathLike | None, seed: int,
                    preprocess: str | dict | None) -> VerifyOptions:
    if atol < 0 or rtol < 0:
        raise UsageError("--atol and --rtol must be >= 0")
    if isinstance(preprocess, str):
        from calibration.spec import PRESETS

        if preprocess not in PRESETS:
            raise UsageError(f"unknown preprocessing preset '{preprocess}'; known: {', '.join(PRESETS)}")
    return VerifyOptions(enabled=verify, atol=atol, rtol=rtol, calib=Path(calib) if calib else None, seed=seed,
                         preprocess=preprocess)


def convert(source: PathLike | None, output: PathLike, *, inputs: Sequence[str] = (), dynamic_batch: bool = False,
            opset: int | None = None, target: str | None = None, model_class: str | None = None,
            weights: PathLike | None = None, model_kwargs: str | dict | None = None, trust_pickle: bool = False,
            exporter: str = "auto", keras_safe_mode: bool = True, verify: bool = True,
            atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, calib: PathLike | None = None, seed: int = 0,
            preprocess: str | dict | None = None):
    """``edgekiln convert``: ingest a PyTorch, TensorFlow or ONNX model into verified ONNX."""
    from toolchain.frontends.base import ConvertOptions
    from toolchain.inputs import parse_input_specs, parse_kwargs
    from toolchain.stages import convert as run_convert
    from toolchain.targets import get_target

    if exporter not in ("auto", "dynamo", "torchscript"):
        raise UsageError(f"--exporter must be auto, dynamo or torchscript, not '{exporter}'")
    if opset is not None and not 7 <= opset <= 23:
        raise UsageError(f"--opset {opset} is outside the supported range 7-23")
    if opset is None and target is not None:
        opset = get_target(target).opset
    options = ConvertOptions(inputs=tuple(parse_input_specs(list(inputs))), dynamic_batch=dynamic_batch, opset=opset,
                             model_class=model_class, weights=Path(weights) if weights else None,
                             model_kwargs=parse_kwargs(model_kwargs), trust_pickle=trust_pickle,
                             exporter=exporter, keras_safe_mode=keras_safe_mode)  # type: ignore[arg-type]
    return run_convert(Path(source) if source else None, Path(output), options,
                       verify_options(verify, atol, rtol, calib, seed, preprocess))


def optimize(model: PathLike, output: PathLike, *, simplify: bool = False, simplify_engine: str = "auto",
             lowrank: bool = False, lowrank_mode: str = "energy", lowrank_energy: float = 0.95,
             lowrank_ratio: float = 0.5, lowrank_min_cosine: float | None = None,
             lowrank_max_error: float | None = None, lowrank_rank_multiple: int = 8, lowrank_min_params: int = 4096,
             lowrank_ops: str | Sequence[str] = "Gemm,MatMul,Conv", lowrank_ranks: Sequence[str] | dict = (),
             lowrank_exclude: Sequence[str] = (), lowrank_bias_correction: bool | None = None,
             fp16: bool = False, dynamic_int8: bool = False, verify: bool = True, atol: float = DEFAULT_ATOL,
             rtol: float = DEFAULT_RTOL, min_cosine: float = 0.99, calib: PathLike | None = None, seed: int = 0,
             preprocess: str | dict | None = None, calib_size: int | None = None, holdout: int | None = None,
             cache_dir: PathLike | None = None, no_cache: bool = False):
    """``edgekiln optimize``: graph passes on an ONNX model, re-verified in ONNX Runtime."""
    from toolchain.passes.calibrate import CalibrationOptions, calibration_cache_dir
    from toolchain.passes.simplify import SimplifyConfig
    from toolchain.stages import optimize as run_optimize

    if fp16 and dynamic_int8:
        raise UsageError("--fp16 and --dynamic-int8 are alternatives; choose one")
    config = SimplifyConfig.from_options(engine=simplify_engine) if simplify else None
    lowrank_cfg = lowrank_config(lowrank_mode, lowrank_energy, lowrank_ratio, lowrank_min_cosine,
                                     lowrank_max_error, lowrank_rank_multiple, lowrank_min_params, lowrank_ops,
                                     lowrank_ranks, lowrank_exclude, lowrank_bias_correction) if lowrank else None
    calibration = None
    if lowrank and calib is not None:
        cache = calibration_cache_dir(cache_dir, no_cache)
        calibration = CalibrationOptions(Path(calib), count=calib_size, holdout=holdout, seed=seed,
                                         preprocess=preprocess, cache_dir=cache)
    lossy = "fp16" if fp16 else "dynamic" if dynamic_int8 else None
    options = replace(verify_options(verify, atol, rtol, calib, seed, preprocess), min_cosine=min_cosine)
    return run_optimize(Path(model), Path(output), simplify=config, lowrank=lowrank_cfg, lossy=lossy,
                        calibration=calibration, verify=options)


# Backend-specific compile options: which backend reads each (the CLI flag is the key with dashes).
BACKEND_OPTIONS: dict[str, str] = {
    "strict": "tensorrt", "dla_core": "tensorrt", "workspace_mb": "tensorrt", "int8_mode": "tensorrt",
    "tensorrt_version": "tensorrt", "max_batch": "tensorrt", "opt_batch": "tensorrt",
    "flash_kb": "tflite", "ram_kb": "tflite", "io_dtype": "tflite",
}


def _checked_backend_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    for key in given:
        owner = BACKEND_OPTIONS.get(key)
        if owner is None:
            raise UsageError(f"unknown backend option '{key}'")
        if owner != backend:
            raise UsageError(f"--{key.replace('_', '-')} applies to the {owner} backend, not {backend}")
    return given


def check_task(task: str) -> None:
    from toolchain.quality import TASKS

    if task not in TASKS:
        raise UsageError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def _quant_options(calib: PathLike | None, calib_size: int | None, holdout: int | None, seed: int, preprocess: str | dict | None,
                   cache_dir: PathLike | None, no_cache: bool, method: str | None, per_channel: bool | None,
                   activation_type: str | None, symmetric: bool | None, guard: bool, max_drop: float,
                   min_cosine: float, task: str = "auto"):
    from toolchain.passes.calibrate import CalibrationOptions, calibration_cache_dir
    from toolchain.precision import QuantOptions
    from toolchain.quant_guard import Budget

    if max_drop < 0 or not 0 < min_cosine <= 1:
        raise UsageError("--max-drop must be >= 0 and --min-cosine in (0, 1]")
    calibration = None
    if calib is not None:
        cache = calibration_cache_dir(cache_dir, no_cache)
        calibration = CalibrationOptions(Path(calib), count=calib_size, holdout=holdout, seed=seed,
                                         preprocess=preprocess, cache_dir=cache)
    overrides = {k: v for k, v in {"method": method, "per_channel": per_channel, "activation_type": activation_type,
                                   "activation_symmetric": symmetric}.items() if v is not None}
    check_task(task)
    return QuantOptions(calibration, overrides, Budget(max_drop, min_cosine, task=task) if guard else None)


def calibrate(model: PathLike, output: PathLike, *, calib: PathLike, target: str | None = None,
              calib_size: int | None = None, holdout: int | None = None, seed: int = 0, preprocess: str | dict | None = None,
              cache_dir: PathLike | None = None, no_cache: bool = False, method: str | None = None,
              per_channel: bool | None = None, activation_type: str | None = None, symmetric: bool | None = None,
              guard: bool = True, max_drop: float = 1.0, min_cosine: float = 0.99, task: str = "auto",
              tensorrt_cache: PathLike | None = None, tensorrt_version: str = "8201",
              post_training_passes: bool = False, weight_rounding: str | None = None):
    """``edgekiln calibrate``: static INT8 from sample images, with the accuracy guard.

    ``post_training_passes`` turns on cross-layer equalization, the per-tensor MSE range search and bias
    correction; ``weight_rounding='learned'`` learned weight rounding (``QuantizeConfig``'s fields; API only
    for now, no CLI flag: they are opt-in until measured better than MinMax everywhere, see bench/ptq.md)."""
    from toolchain.passes.calibrate import calibrate as run_calibrate
    from toolchain.passes.quantize import QuantizeConfig

    from toolchain.fileio import check_writable_destination, refuse_clobbering

    quant = _quant_options(calib, calib_size, holdout, seed, preprocess, cache_dir, no_cache, method, per_channel,
                           activation_type, symmetric, guard, max_drop, min_cosine, task)
    if post_training_passes:
        quant.overrides.update(equalize=True, range_search="mse", bias_correction=True)
    if weight_rounding is not None:
        quant.overrides["weight_rounding"] = weight_rounding
    config = QuantizeConfig.for_target(target, **quant.overrides)  # an unknown target fails before any work
    for destination in (output, tensorrt_cache):
        if destination is not None:
            check_writable_destination(Path(destination))
            refuse_clobbering(Path(destination), {"the source model": Path(model), "the --calib folder": Path(calib)})
    _check_split(quant)
    return run_calibrate(Path(model), Path(output), quant.calibration, config, quant.budget,
                         Path(tensorrt_cache) if tensorrt_cache else None, tensorrt_version)


def compile(model: PathLike, output: PathLike, *, backend: str | None = None, target: str | None = None,  # noqa: A001
            precision: str | None = None, threads: int | None = None, graph_optimization: str = "all",
            verify: bool = True, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            calib: PathLike | None = None, preprocess: str | dict | None = None, seed: int = 0,
            calib_size: int | None = None, holdout: int | None = None, cache_dir: PathLike | None = None,
            no_cache: bool = False, method: str | None = None, per_channel: bool | None = None, activation_type: str | None = None,
            symmetric: bool | None = None, guard: bool = True, max_drop: float = 1.0, min_cosine: float = 0.99,
            task: str = "auto", backend_options: dict[str, Any] | None = None):
    """``edgekiln compile``: lower an ONNX model to a backend artifact folder, verified against ONNX Runtime.

    ``backend_options`` are backend-specific (see ``BACKEND_OPTIONS``), e.g. ``{"dla_core": 0}`` for TensorRT.
    """
    from backends.base import CompileOptions
    from toolchain.stages import compile_artifact
    from toolchain.targets import get_target

    profile = get_target(target) if target else None
    backend = backend or (profile.backend if profile else "onnxruntime")
    if profile and profile.backend != backend:
        raise UsageError(f"target '{target}' uses the {profile.backend} backend, not {backend}")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be >= 1")
    precision = precision or (profile.precision if profile else "fp32")
    extra = {"graph_optimization": graph_optimization, **_checked_backend_options(backend, backend_options or {})}
    if profile is not None and profile.name == "mcu":
        _check_mcu_size(Path(model), extra.get("flash_kb"))
    options = CompileOptions(precision=precision, target=target, threads=threads, extra=extra)
    quant = _quant_options(calib, calib_size, holdout, seed, preprocess, cache_dir, no_cache, method, per_channel,
                           activation_type, symmetric, guard, max_drop, min_cosine, task)
    if precision == "int8":
        _check_split(quant)
    checks = replace(verify_options(verify, atol, rtol, calib, seed, preprocess), min_cosine=min_cosine)
    return compile_artifact(Path(model), Path(output), backend, options, checks, quant=quant)


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

"""Python API mirroring the CLI: one function per command, one keyword argument per flag.

>>> from toolchain import api
>>> api.convert("model.pt", "model.onnx", inputs=["input:1x3x224x224"], dynamic_batch=True)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from toolchain.errors import UsageError
from toolchain.verify import DEFAULT_ATOL, DEFAULT_RTOL, VerifyOptions

PathLike = str | Path


def _verify_options(verify: bool, atol: float, rtol: float, calib: PathLike | None, seed: int,
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
                       _verify_options(verify, atol, rtol, calib, seed, preprocess))


def lowrank_config(mode: str = "energy", energy: float = 0.95, ratio: float = 0.5, min_cosine: float | None = None,
                   max_error: float | None = None, rank_multiple: int = 8, min_params: int = 4096,
                   ops: str | Sequence[str] = "Gemm,MatMul,Conv", ranks: Sequence[str] | dict = (),
                   exclude: Sequence[str] = (), bias_correction: bool | None = None):
    """The low-rank pass's config from ``optimize``'s ``lowrank_*`` arguments (prefix dropped), validated."""
    from toolchain.passes.lowrank import LowRankConfig

    if isinstance(ranks, dict):
        fixed = dict(ranks)
    else:
        fixed = {}
        for item in ranks:
            node, sep, rank = item.rpartition("=")
            if not sep or not node or not rank.isdigit():
                raise UsageError(f"--lowrank-rank expects NODE=RANK, got '{item}'")
            fixed[node] = int(rank)
    op_types = tuple(o.strip() for o in ops.split(",") if o.strip()) if isinstance(ops, str) else tuple(ops)
    return LowRankConfig.from_options(mode=mode, energy=energy, target_ratio=ratio, min_cosine=min_cosine,
                                      max_relative_error=max_error, rank_multiple=rank_multiple,
                                      min_parameters=min_params, op_types=op_types, ranks=fixed,
                                      nodes_to_exclude=tuple(exclude), bias_correction=bias_correction)


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
    from toolchain.calibrate import CalibrationOptions, calibration_cache_dir
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
    options = replace(_verify_options(verify, atol, rtol, calib, seed, preprocess), min_cosine=min_cosine)
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


def _check_task(task: str) -> None:
    from toolchain.quality import TASKS

    if task not in TASKS:
        raise UsageError(f"unknown task '{task}'; choose one of {', '.join(TASKS)}")


def _quant_options(calib: PathLike | None, calib_size: int | None, holdout: int | None, seed: int, preprocess: str | dict | None,
                   cache_dir: PathLike | None, no_cache: bool, method: str | None, per_channel: bool | None,
                   activation_type: str | None, symmetric: bool | None, guard: bool, max_drop: float,
                   min_cosine: float, task: str = "auto"):
    from toolchain.calibrate import CalibrationOptions, calibration_cache_dir
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
    _check_task(task)
    return QuantOptions(calibration, overrides, Budget(max_drop, min_cosine, task=task) if guard else None)


def calibrate(model: PathLike, output: PathLike, *, calib: PathLike, target: str | None = None,
              calib_size: int | None = None, holdout: int | None = None, seed: int = 0, preprocess: str | dict | None = None,
              cache_dir: PathLike | None = None, no_cache: bool = False, method: str | None = None,
              per_channel: bool | None = None, activation_type: str | None = None, symmetric: bool | None = None,
              guard: bool = True, max_drop: float = 1.0, min_cosine: float = 0.99, task: str = "auto",
              tensorrt_cache: PathLike | None = None, tensorrt_version: str = "8201"):
    """``edgekiln calibrate``: static INT8 from sample images, with the accuracy guard."""
    from toolchain.calibrate import calibrate as run_calibrate
    from toolchain.passes.quantize import QuantizeConfig

    from toolchain.fileio import check_writable_destination

    quant = _quant_options(calib, calib_size, holdout, seed, preprocess, cache_dir, no_cache, method, per_channel,
                           activation_type, symmetric, guard, max_drop, min_cosine, task)
    config = QuantizeConfig.for_target(target, **quant.overrides)  # an unknown target fails before any work
    for destination in (output, tensorrt_cache):
        if destination is not None:
            check_writable_destination(Path(destination))
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
    verify_options = replace(_verify_options(verify, atol, rtol, calib, seed, preprocess), min_cosine=min_cosine)
    return compile_artifact(Path(model), Path(output), backend, options, verify_options, quant=quant)


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


# What 'edgekiln build' with no arguments builds the bundled example for: one device of each backend,
# and x86 at both precisions so the report shows what INT8 costs and gains.
EXAMPLE_TARGETS = ("x86", "x86:int8", "rpi4", "mcu", "jetson-nano")


def build(source: PathLike | None = None, output: PathLike = "edgekiln-out", *, targets: Sequence[str] = (),
          labels: PathLike | None = None, simplify: bool = True, bench_iterations: int = 50,
          inputs: Sequence[str] = (), dynamic_batch: bool = False, opset: int | None = None,
          model_class: str | None = None, weights: PathLike | None = None, model_kwargs: str | dict | None = None,
          trust_pickle: bool = False, exporter: str = "auto", keras_safe_mode: bool = True, verify: bool = True,
          atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, calib: PathLike | None = None, seed: int = 0,
          preprocess: str | dict | None = None, calib_size: int | None = None, holdout: int | None = None,
          max_drop: float = 1.0, min_cosine: float = 0.99, method: str | None = None, guard: bool = True,
          task: str = "auto", cache_dir: PathLike | None = None, no_cache: bool = False, fail_fast: bool = False,
          dry_run: bool = False,
          progress: Any = None, announce: Any = None, **lowrank_options: Any):
    """``edgekiln build``: convert, simplify, (low-rank), compile per target, verify, evaluate and time; with
    no source, the bundled Fashion-MNIST example. Targets are ``TARGET`` or ``TARGET:PRECISION``.
    ``lowrank_options`` are ``optimize``'s ``lowrank*`` arguments. Stages are cached under ``cache_dir``
    (``no_cache`` turns that off). ``calib_size``/``holdout`` None: chosen from the folder's size.

    A target that fails (the accuracy guard refuses its INT8, its backend cannot convert the model) is
    recorded in the result (``result.failed``) while the other targets and the report are written;
    ``fail_fast`` raises on the first failure instead and writes nothing. Everything that can be checked
    before a stage runs (each target's needs, sample counts, the model's input) is checked first.
    ``dry_run`` returns the plan (a list of ``PlannedStage``) instead of building;
    ``progress(stage, index, total, state, seconds)`` is called as stages start and finish (state "start",
    "done", "cached", "failed" or "skipped"); ``announce(line)`` gets what the build decided for the user
    (the sample split, inferred preprocessing, warnings)."""
    from toolchain.build import build as run_build
    from toolchain.build import check_variants, example_defaults, plan
    from toolchain.build_plan import BuildRequest
    from toolchain.stage_cache import StageCache, default_cache_root

    convert_options: dict[str, Any] = dict(inputs=list(inputs), dynamic_batch=dynamic_batch, opset=opset,
                                           model_class=model_class, weights=weights, model_kwargs=model_kwargs,
                                           trust_pickle=trust_pickle, exporter=exporter,
                                           keras_safe_mode=keras_safe_mode)
    if source is None and model_class is None:
        targets = list(targets) or list(EXAMPLE_TARGETS)
        example = example_defaults()
        labels = labels or example.pop("labels")
        if calib is None:  # the example's own 300 images, with the example's split
            calib = example.pop("calib")
            calib_size = calib_size or example.pop("calib_size")
        preprocess = preprocess or example.pop("preprocess")
        convert_options.update({k: v for k, v in example.items() if k in convert_options})
    if bench_iterations < 0:
        raise UsageError("--bench-iterations must be >= 0")
    if max_drop < 0 or not 0 < min_cosine <= 1:
        raise UsageError("--max-drop must be >= 0 and --min-cosine in (0, 1]")
    _check_task(task)
    quant_options = {"calib_size": calib_size, "holdout": holdout, "max_drop": max_drop,
                     "min_cosine": min_cosine, "method": method, "guard": guard, "cache_dir": cache_dir,
                     "no_cache": no_cache, **({"task": task} if task != "auto" else {})}
    request = BuildRequest(Path(source) if source else None, Path(output), check_variants(list(targets) or ["x86"]),
                           convert_options, _verify_options(verify, atol, rtol, calib, seed, preprocess),
                           labels=Path(labels) if labels else None, simplify=simplify,
                           bench_iterations=bench_iterations, quant_options=quant_options,
                           lowrank_options=_lowrank_build_options(lowrank_options), fail_fast=fail_fast)
    cache = StageCache(Path(cache_dir) if cache_dir else default_cache_root(), enabled=not no_cache)
    if dry_run:
        return plan(request, cache, announce)
    return run_build(request, cache, progress, announce)


def compare(artifacts: Sequence[PathLike], *, calib: PathLike | None = None, count: int = 32, seed: int = 0,
            per_layer: bool = False, preprocess: str | dict | None = None):
    """``edgekiln compare``: artifacts on the same inputs against the first; optionally per layer (ONNX).
    ``preprocess`` (a preset or spec) is how ``calib`` images are preprocessed; by default each
    artifact's manifest says (inferred from the input shape for a bare .onnx file)."""
    from toolchain.artifact import Artifact
    from toolchain.compare import comparison_feeds, compare_artifacts
    from toolchain.compare import per_layer as layer_diffs

    _verify_options(True, DEFAULT_ATOL, DEFAULT_RTOL, calib, seed, preprocess)  # an unknown preset fails now
    paths = [Path(a) for a in artifacts]
    comparisons = compare_artifacts(paths, calib=Path(calib) if calib else None, count=count, seed=seed,
                                    preprocess=preprocess)
    layers = {}
    if per_layer:
        reference = Artifact.open(paths[0])
        feeds = comparison_feeds(reference, Path(calib) if calib else None, min(count, 8), seed, preprocess)
        for path in paths[1:]:
            candidate = Artifact.open(path)
            if reference.model_path.suffix != ".onnx" or candidate.model_path.suffix != ".onnx":
                raise UsageError("--per-layer compares ONNX models (ONNX Runtime artifacts or .onnx files)")
            layers[str(path)] = layer_diffs(reference.model_path, candidate.model_path, feeds)
    return comparisons, layers


def _lowrank_build_options(options: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(k for k in options if not k.startswith("lowrank"))
    if unknown:
        raise UsageError(f"build got unknown option(s): {', '.join(unknown)}")
    return options


def evaluate(artifact: PathLike, labels: PathLike):
    """``edgekiln eval``: top-1/top-5 accuracy on a labelled image folder."""
    from toolchain.evaluate import evaluate as run_evaluate

    return run_evaluate(Path(artifact), Path(labels))


def run(artifact: PathLike, inputs: Sequence[str], *, threads: int | None = None):
    """``edgekiln run``: one inference; returns (feed, outputs)."""
    from toolchain.predict import run_artifact

    return run_artifact(Path(artifact), list(inputs), threads=threads)


def bench(artifact: PathLike, *, warmup: int = 10, iterations: int = 100, threads: int | None = None,
          batch: int = 1, seed: int = 0):
    """``edgekiln bench``: latency percentiles, throughput and peak memory."""
    from toolchain.bench import benchmark

    return benchmark(Path(artifact), warmup=warmup, iterations=iterations, threads=threads, batch=batch, seed=seed)


def inspect(model: PathLike):  # noqa: A001 - mirrors the command name
    """``edgekiln inspect``: an ONNX model's structure, size, parameters and MACs (a ``ModelSummary``), or a
    TFLite model's ops, tensor types, quantization parameters and size (a dict)."""
    from toolchain.fileio import require_file

    _refuse_source_model(Path(model))
    path = require_file(Path(model), "model")
    if path.suffix.lower() == ".tflite":
        from backends.tflite.inspect import summarize_tflite

        return summarize_tflite(path)
    from toolchain.model_info import summarize
    from toolchain.onnx_io import load_onnx

    return summarize(load_onnx(path), path)


_SOURCE_KINDS = {"torch": "a PyTorch file (TorchScript, state dict or pickled model)",
                 "torch-export": "a torch.export program", "keras": "a Keras model", "h5": "a Keras HDF5 model",
                 "savedmodel": "a TensorFlow SavedModel"}


def _refuse_source_model(path: Path) -> None:
    """A PyTorch/Keras/TensorFlow model given to inspect: say what it is and how to get an ONNX file."""
    from toolchain.errors import InputFileError, ToolchainError
    from toolchain.frontends import detect_format
    from toolchain.frontends.base import ConvertOptions

    if not path.exists() or path.suffix.lower() in (".onnx", ".tflite"):
        return
    try:
        kind = detect_format(path, ConvertOptions())
    except ToolchainError:  # no known extension or content: perhaps ONNX without its suffix
        return
    if kind not in _SOURCE_KINDS:
        return
    needs = " --input NAME:SHAPE" if kind == "torch" else ""
    raise InputFileError(f"'{path.name}' is {_SOURCE_KINDS[kind]}, not an ONNX or TFLite model; inspect reads "
                         "those two",
                         hint=f"Convert it first: edgekiln convert {path}{needs} -o {path.stem}.onnx, then inspect "
                              f"{path.stem}.onnx (a state dict also needs --model-class).")


def backends() -> list[dict[str, Any]]:
    """``edgekiln backends``: every backend with whether it is usable here and, if not, what to install."""
    from backends.registry import all_backends

    rows = []
    for backend in all_backends():
        available, reason = backend.is_available()
        rows.append({"name": backend.name, "available": available, "status": reason,
                     "precisions": list(backend.capabilities.precisions), "description": backend.description})
    return rows


# Compression before export (PyTorch): the options are those of the functions named, one per CLI flag.
def prune(source: PathLike | None, output: PathLike, *, ratio: float, **options: Any):
    """``edgekiln prune``: structured (or unstructured) pruning, distillation recovery, measured after export.
    Options: ``toolchain.compress.prune.api_prune``."""
    from toolchain.compress.prune import api_prune

    return api_prune(Path(source) if source else None, Path(output), ratio=ratio, **options)


def distill(teacher: PathLike | None, student_class: str, output: PathLike, *, images: PathLike, **options: Any):
    """``edgekiln distill``: train a smaller student on a teacher's outputs on unlabelled images.
    Options: ``toolchain.compress.distill.api_distill``."""
    from toolchain.compress.distill import api_distill

    return api_distill(teacher, student_class, output, images=images, **options)


def qat(source: PathLike | None, output: PathLike, *, calib: PathLike, **options: Any):
    """``edgekiln qat``: quantization-aware fine-tuning to QDQ INT8 ONNX, compared with FP32 and PTQ.
    Options: ``toolchain.compress.qat.api_qat``."""
    from toolchain.compress.qat import api_qat

    return api_qat(source, output, calib=calib, **options)

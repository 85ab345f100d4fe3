"""Python API mirroring the CLI: one function per command, one keyword argument per flag.

>>> from toolchain import api
>>> api.convert("model.pt", "model.onnx", inputs=["input:1x3x224x224"], dynamic_batch=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from toolchain.commands import (BACKEND_OPTIONS, PathLike, calibrate, compile, convert,  # noqa: A004, F401
                                lowrank_config, optimize)  # re-exported commands
from toolchain.commands import check_task as _check_task
from toolchain.commands import verify_options as _verify_options
from toolchain.errors import UsageError
from toolchain.verify import DEFAULT_ATOL, DEFAULT_RTOL


# What 'edgekiln build' with no arguments builds the bundled example for: one device of each backend,
# and x86 at both precisions so the report shows what INT8 costs and gains.
EXAMPLE_TARGETS = ("x86", "x86:int8", "rpi4", "mcu", "jetson-nano")


def build_request(source: PathLike | None = None, output: PathLike = "edgekiln-out", *, targets: Sequence[str] = (),
                  labels: PathLike | None = None, simplify: bool = True, bench_iterations: int = 50,
                  inputs: Sequence[str] = (), dynamic_batch: bool = False, opset: int | None = None,
                  model_class: str | None = None, weights: PathLike | None = None,
                  model_kwargs: str | dict | None = None, trust_pickle: bool = False, exporter: str = "auto",
                  keras_safe_mode: bool = True, verify: bool = True, atol: float = DEFAULT_ATOL,
                  rtol: float = DEFAULT_RTOL, calib: PathLike | None = None, seed: int = 0,
                  preprocess: str | dict | None = None, calib_size: int | None = None, holdout: int | None = None,
                  max_drop: float = 1.0, min_cosine: float = 0.99, method: str | None = None, guard: bool = True,
                  task: str = "auto", cache_dir: PathLike | None = None, no_cache: bool = False,
                  fail_fast: bool = False, **lowrank_options: Any):
    """``edgekiln build``'s options (one per flag) as a ``BuildRequest`` and its ``StageCache``; runs nothing.

    Targets are ``TARGET`` or ``TARGET:PRECISION``. ``lowrank_options`` are ``optimize``'s ``lowrank*``
    arguments. Stages are cached under ``cache_dir`` (``no_cache`` turns that off). ``calib_size``/``holdout``
    None: chosen from the folder's size. ``edgekiln fleet`` plans each of its models with this.
    """
    from toolchain.build import check_variants, example_defaults
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
    return request, StageCache(Path(cache_dir) if cache_dir else default_cache_root(), enabled=not no_cache)


def build(source: PathLike | None = None, output: PathLike = "edgekiln-out", *, dry_run: bool = False,
          progress: Any = None, announce: Any = None, **options: Any):
    """``edgekiln build``: convert, simplify, (low-rank), compile per target, verify, evaluate and time; with
    no source, the bundled Fashion-MNIST example. ``options`` are ``build_request``'s (one per flag).

    A target that fails (the accuracy guard refuses its INT8, its backend cannot convert the model) is
    recorded in the result (``result.failed``) while the other targets and the report are written;
    ``fail_fast`` raises on the first failure instead and writes nothing. Everything that can be checked
    before a stage runs (each target's needs, sample counts, the model's input) is checked first.
    ``dry_run`` returns the plan (a list of ``PlannedStage``) instead of building;
    ``progress(stage, index, total, state, seconds)`` is called as stages start and finish (state "start",
    "done", "cached", "failed" or "skipped"); ``announce(line)`` gets what the build decided for the user
    (the sample split, inferred preprocessing, warnings)."""
    from toolchain.build import build as run_build
    from toolchain.build import plan

    request, cache = build_request(source, output, **options)
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

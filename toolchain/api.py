"""Python API mirroring the CLI: one function per command, one keyword argument per flag.

>>> from toolchain import api
>>> api.convert("model.pt", "model.onnx", inputs=["input:1x3x224x224"], dynamic_batch=True)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from toolchain import commands
from toolchain.commands import PathLike
from toolchain.errors import UsageError
from toolchain.options import keywords_of, refuse_leftovers, settings_of, take, with_keywords
from toolchain.settings import BuildSettings, QuantSettings, SampleSettings, SourceSettings, VerifySettings

# What 'edgekiln build' with no arguments builds the bundled example for: one device of each backend,
# and x86 at both precisions so the report shows what INT8 costs and gains.
EXAMPLE_TARGETS = ("x86", "x86:int8", "rpi4", "mcu", "jetson-nano")

# Every function below takes one keyword per flag of its command; the keywords, their types and defaults
# are generated from the option groups (``toolchain.settings``, the pass configs, the backends' options),
# and each function's signature lists them (``help(api.build)``).


def _backend_groups() -> list[type]:
    from backends.registry import backend_option_groups

    return [group for _name, group in backend_option_groups()]


def _take_backend_settings(options: dict[str, Any]) -> dict[str, Any]:
    from backends.registry import backend_option_owners

    return {k: options.pop(k) for k in list(options) if k in backend_option_owners()}


def _take_passes(options: dict[str, Any], names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Pass name -> its config for each pass switched on (``lowrank=True``); their settings are taken too."""
    from toolchain.options import from_keywords
    from toolchain.passes.registry import PASSES

    passes = {}
    for entry in PASSES:
        if names is not None and entry.name not in names:
            continue
        config = entry.config_class()
        settings = {k: options.pop(k) for k in (keywords_of(config) if config else ()) if k in options}
        if options.pop(entry.name, False):
            passes[entry.name] = from_keywords(config, settings) if config else None
    return passes


def convert(source: PathLike | None, output: PathLike, *, target: str | None = None, **options: Any):
    """``edgekiln convert``: ingest a PyTorch, TensorFlow or ONNX model into verified ONNX."""
    settings, verify = take(options, SourceSettings), take(options, VerifySettings)
    refuse_leftovers(options, keywords_of(SourceSettings, VerifySettings), "convert")
    return commands.convert(source, output, target=target, settings=settings, verify=verify)


def optimize(model: PathLike, output: PathLike, **options: Any):
    """``edgekiln optimize``: graph passes on an ONNX model (``simplify=True``, ``lowrank=True`` with its
    ``lowrank_*`` settings, ``fp16=True`` or ``dynamic_int8=True``), re-verified in ONNX Runtime."""
    passes = _take_passes(options)
    min_cosine = take(options, QuantSettings, only=("min_cosine",)).min_cosine
    verify, samples = take(options, VerifySettings), take(options, SampleSettings)
    refuse_leftovers(options, keywords_of(VerifySettings, SampleSettings), "optimize")
    return commands.optimize(model, output, passes=passes, verify=verify, samples=samples, min_cosine=min_cosine)


CALIBRATE_VERIFY = ("calib", "seed", "preprocess")
"""The verification settings ``calibrate`` takes: its samples, their selection and preprocessing."""


def calibrate(model: PathLike, output: PathLike, *, target: str | None = None, tensorrt_cache: PathLike | None = None,
              tensorrt_version: str = "8201", **options: Any):
    """``edgekiln calibrate``: static INT8 from sample images (``calib``), with the accuracy guard.

    The post-training passes are keywords like the rest (``equalize=True, range_search='mse',
    bias_correction=True, weight_rounding='learned'``; bench/ptq.md measures each)."""
    verify = take(options, VerifySettings, only=CALIBRATE_VERIFY)
    samples, quant = take(options, SampleSettings), take(options, QuantSettings)
    refuse_leftovers(options, (*CALIBRATE_VERIFY, *keywords_of(SampleSettings, QuantSettings)), "calibrate")
    return commands.calibrate(model, output, target=target, verify=verify, samples=samples, quant=quant,
                              tensorrt_cache=tensorrt_cache, tensorrt_version=tensorrt_version)


def compile(model: PathLike, output: PathLike, *, backend: str | None = None, target: str | None = None,  # noqa: A001
            precision: str | None = None, threads: int | None = None, graph_optimization: str = "all",
            backend_options: dict[str, Any] | None = None, **options: Any):
    """``edgekiln compile``: lower an ONNX model to a backend artifact folder, verified against ONNX Runtime.

    Backend-specific settings (each backend's ``options`` group, e.g. ``dla_core=0`` for TensorRT) are
    keywords too; ``backend_options`` is the same as a dict."""
    verify, samples, quant = take(options, VerifySettings), take(options, SampleSettings), take(options, QuantSettings)
    backend_settings = {**(backend_options or {}), **_take_backend_settings(options)}
    refuse_leftovers(options, keywords_of(VerifySettings, SampleSettings, QuantSettings), "compile")
    return commands.compile(model, output, backend=backend, target=target, precision=precision, threads=threads,
                            graph_optimization=graph_optimization, verify=verify, samples=samples, quant=quant,
                            backend_settings=backend_settings)


def build_request(source: PathLike | None = None, output: PathLike = "edgekiln-out", **options: Any):
    """``edgekiln build``'s options (one keyword per flag) as a ``BuildRequest`` and its ``StageCache``; runs
    nothing. Targets are ``TARGET`` or ``TARGET:PRECISION``. Stages are cached under ``cache_dir``
    (``no_cache`` turns that off). ``calib_size``/``holdout`` None: chosen from the folder's size.
    ``edgekiln fleet`` plans each of its models with this."""
    from toolchain.build import check_variants, example_defaults
    from toolchain.build_plan import BuildRequest
    from toolchain.cache_root import cache_problem
    from toolchain.stage_cache import StageCache, default_cache_root

    build = take(options, BuildSettings)
    source_values = {k: options.pop(k) for k in keywords_of(SourceSettings) if k in options}
    verify_values = {k: options.pop(k) for k in keywords_of(VerifySettings) if k in options}
    samples, quant = take(options, SampleSettings), take(options, QuantSettings)
    from toolchain.passes.registry import BUILD_PASSES

    passes = _take_passes(options, BUILD_PASSES)
    backend_settings = _take_backend_settings(options)
    refuse_leftovers(options, _build_keywords(), "build")
    for keyword in QuantSettings.PER_TARGET:  # build takes these from each target
        if getattr(quant, keyword) is not None:
            raise UsageError(f"--{keyword.replace('_', '-')} is chosen per target in build; use compile for it")
    targets = list(build.targets)
    if source is None and source_values.get("model_class") is None:
        targets = targets or list(EXAMPLE_TARGETS)
        example = example_defaults()
        build = build.model_copy(update={"labels": build.labels or example.pop("labels")})
        if verify_values.get("calib") is None:  # the example's own 300 images, with the example's split
            verify_values["calib"] = example.pop("calib")
            samples = samples.model_copy(update={"calib_size": samples.calib_size or example.pop("calib_size")})
        verify_values["preprocess"] = verify_values.get("preprocess") or example.pop("preprocess")
        source_values.update({k: v for k, v in example.items() if k in keywords_of(SourceSettings)})
    request = BuildRequest(Path(source) if source else None, Path(output), check_variants(targets or ["x86"]),
                           take(source_values, SourceSettings), take(verify_values, VerifySettings),
                           labels=build.labels, simplify=build.simplify, bench_iterations=build.bench_iterations,
                           samples=samples, quant=quant, passes=passes,
                           backend_settings=backend_settings, fail_fast=build.fail_fast)
    cache_root = Path(samples.cache_dir) if samples.cache_dir else default_cache_root()
    cache = StageCache(cache_root, enabled=not samples.no_cache)
    problem = cache_problem(cache_root) if cache.enabled else None
    if problem:
        why, unreadable = problem
        cache.enabled = not unreadable
        cache.notes.append(f"cache '{cache_root}' not used: {why}; every stage runs" if unreadable else
                           f"cache '{cache_root}': {why}, so new stages may not be cached")
    return request, cache


def build_settings() -> list[Any]:
    """Every setting ``edgekiln build`` takes (its flags, recipe keys and keywords), besides the pass switches."""
    from toolchain.passes.registry import BUILD_PASSES, pass_entry

    passes = [s for name in BUILD_PASSES if pass_entry(name).config_class()
              for s in settings_of(pass_entry(name).config_class())]
    return [s for group in (BuildSettings, SourceSettings) for s in settings_of(group)] + passes + [
        s for group in (VerifySettings, SampleSettings, QuantSettings, *_backend_groups()) for s in settings_of(group)]


def _build_keywords() -> tuple[str, ...]:
    from toolchain.passes.registry import BUILD_PASSES

    return (*(s.keyword for s in build_settings()), *BUILD_PASSES)


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

    commands.verify_options(take({"preprocess": preprocess}, VerifySettings))  # an unknown preset fails now
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


def _signed() -> None:
    """Give each command function a signature listing every keyword it takes (generated from the groups).

    Done once, on the first look at one of them (``__getattr__`` below), not at import: it loads every
    backend class, plugins' included, which ``import toolchain.api`` alone should not pay for."""
    from toolchain.passes.registry import PASSES

    pass_settings = [s for entry in PASSES if entry.config_class() for s in settings_of(entry.config_class())]
    switches = {entry.name: False for entry in PASSES}
    backend = [s for group in _backend_groups() for s in settings_of(group)]
    with_keywords(convert, settings_of(SourceSettings) + settings_of(VerifySettings))
    with_keywords(optimize, pass_settings + [s for s in settings_of(QuantSettings) if s.keyword == "min_cosine"]
                  + settings_of(VerifySettings) + settings_of(SampleSettings), switches)
    with_keywords(calibrate, [s for s in settings_of(VerifySettings) if s.keyword in CALIBRATE_VERIFY]
                  + settings_of(SampleSettings) + settings_of(QuantSettings))
    with_keywords(compile, settings_of(VerifySettings) + settings_of(SampleSettings) + settings_of(QuantSettings)
                  + backend)
    from toolchain.passes.registry import BUILD_PASSES

    for function in (build_request, build):
        with_keywords(function, build_settings(), {name: False for name in BUILD_PASSES})


# The command functions are handed out by ``__getattr__`` so that the first look at one (a call, an import,
# ``inspect.signature``) signs them all; until then they wait here, out of the module's namespace.
_UNSIGNED = {name: globals().pop(name) for name in ("convert", "optimize", "calibrate", "compile", "build_request",
                                                     "build")}


def __getattr__(name: str) -> Any:
    if name not in _UNSIGNED:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals().update(_UNSIGNED)
    _signed()
    return _UNSIGNED[name]


def __dir__() -> list[str]:
    return sorted({*globals(), *_UNSIGNED})

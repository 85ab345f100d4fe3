"""Python API mirroring the CLI: one function per command, one keyword argument per flag.

>>> from toolchain import api
>>> api.convert("model.pt", "model.onnx", inputs=["input:1x3x224x224"], dynamic_batch=True)
"""

from __future__ import annotations

import json
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


def _model_kwargs(value: str | dict | None) -> dict:
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--model-kwargs is not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(parsed, dict):
        raise UsageError("--model-kwargs must be a JSON object such as '{\"num_classes\": 10}'")
    return parsed


def convert(source: PathLike | None, output: PathLike, *, inputs: Sequence[str] = (), dynamic_batch: bool = False,
            opset: int | None = None, target: str | None = None, model_class: str | None = None,
            weights: PathLike | None = None, model_kwargs: str | dict | None = None, trust_pickle: bool = False,
            exporter: str = "auto", keras_safe_mode: bool = True, verify: bool = True,
            atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, calib: PathLike | None = None, seed: int = 0,
            preprocess: str | dict | None = None):
    """``edgekiln convert``: ingest a PyTorch, TensorFlow or ONNX model into verified ONNX."""
    from toolchain.frontends.base import ConvertOptions
    from toolchain.inputs import parse_input_specs
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
                             model_kwargs=_model_kwargs(model_kwargs), trust_pickle=trust_pickle,
                             exporter=exporter, keras_safe_mode=keras_safe_mode)  # type: ignore[arg-type]
    return run_convert(Path(source) if source else None, Path(output), options,
                       _verify_options(verify, atol, rtol, calib, seed, preprocess))


def optimize(model: PathLike, output: PathLike, *, simplify: bool = False, simplify_engine: str = "auto",
             verify: bool = True, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
             calib: PathLike | None = None, seed: int = 0, preprocess: str | dict | None = None):
    """``edgekiln optimize``: graph passes on an ONNX model, re-verified in ONNX Runtime."""
    from toolchain.passes.simplify import SimplifyConfig
    from toolchain.stages import optimize as run_optimize

    config = SimplifyConfig.from_options(engine=simplify_engine) if simplify else None
    return run_optimize(Path(model), Path(output), simplify=config,
                        verify=_verify_options(verify, atol, rtol, calib, seed, preprocess))


def compile(model: PathLike, output: PathLike, *, backend: str | None = None, target: str | None = None,  # noqa: A001
            precision: str | None = None, threads: int | None = None, graph_optimization: str = "all",
            verify: bool = True, atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL,
            calib: PathLike | None = None, preprocess: str | dict | None = None, seed: int = 0):
    """``edgekiln compile``: lower an ONNX model to a backend artifact folder, verified against ONNX Runtime."""
    from backends.base import CompileOptions
    from toolchain.stages import compile_artifact
    from toolchain.targets import get_target

    profile = get_target(target) if target else None
    backend = backend or (profile.backend if profile else "onnxruntime")
    if profile and profile.backend != backend:
        raise UsageError(f"target '{target}' uses the {profile.backend} backend, not {backend}")
    if threads is not None and threads < 1:
        raise UsageError("--threads must be >= 1")
    options = CompileOptions(precision=precision or "fp32", target=target, threads=threads,
                             extra={"graph_optimization": graph_optimization})
    return compile_artifact(Path(model), Path(output), backend, options,
                            _verify_options(verify, atol, rtol, calib, seed, preprocess))


def build(source: PathLike | None = None, output: PathLike = "edgekiln-out", *, targets: Sequence[str] = ("x86",),
          labels: PathLike | None = None, simplify: bool = True, bench_iterations: int = 50,
          inputs: Sequence[str] = (), dynamic_batch: bool = False, opset: int | None = None,
          model_class: str | None = None, weights: PathLike | None = None, model_kwargs: str | dict | None = None,
          trust_pickle: bool = False, exporter: str = "auto", keras_safe_mode: bool = True, verify: bool = True,
          atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, calib: PathLike | None = None, seed: int = 0,
          preprocess: str | dict | None = None):
    """``edgekiln build``: convert, simplify, compile per target, verify, evaluate and time; with no source,
    the bundled Fashion-MNIST example."""
    from toolchain.build import build as run_build
    from toolchain.build import example_defaults

    convert_options: dict[str, Any] = dict(inputs=inputs, dynamic_batch=dynamic_batch, opset=opset,
                                           model_class=model_class, weights=weights, model_kwargs=model_kwargs,
                                           trust_pickle=trust_pickle, exporter=exporter,
                                           keras_safe_mode=keras_safe_mode)
    if source is None and model_class is None:
        example = example_defaults()
        labels = labels or example.pop("labels")
        calib = calib or example.pop("calib")
        preprocess = preprocess or example.pop("preprocess")
        convert_options.update({k: v for k, v in example.items() if k in convert_options})
    return run_build(Path(source) if source else None, Path(output), targets=list(targets) or ["x86"],
                     convert_options=convert_options, verify=_verify_options(verify, atol, rtol, calib, seed, preprocess),
                     labels=Path(labels) if labels else None, simplify=simplify, bench_iterations=bench_iterations)


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
    """``edgekiln inspect``: structure, size, parameters and MACs of an ONNX model."""
    from toolchain.model_info import summarize
    from toolchain.onnx_io import load_onnx

    path = Path(model)
    return summarize(load_onnx(path), path)


def backends() -> list[dict[str, Any]]:
    """``edgekiln backends``: every backend with whether it is usable here and, if not, what to install."""
    from backends.registry import all_backends

    rows = []
    for backend in all_backends():
        available, reason = backend.is_available()
        rows.append({"name": backend.name, "available": available, "status": reason,
                     "precisions": list(backend.capabilities.precisions), "description": backend.description})
    return rows

"""The three model-producing stages: convert (ingest), optimize (passes) and compile (backend).

Each stage checks its output location before doing any work, verifies its result
numerically, and writes atomically, so a failure leaves nothing behind.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnx

from toolchain.artifact import SDK_DISTRIBUTIONS, Artifact, sdk_versions, tool_versions, write_manifest
from toolchain.errors import MissingDependencyError, OutputError, UsageError
from toolchain.fileio import atomic_directory, check_writable_destination, refuse_clobbering, sha256_path
from toolchain.feeds import image_preprocess_or_none
from toolchain.frontends import ingest
from toolchain.hostcpu import host_cpu
from toolchain.frontends.base import ConvertOptions, Feed
from toolchain.onnx_io import TensorInfo, graph_inputs, graph_outputs, load_onnx, opset_version, save_onnx
from toolchain.passes.base import PassReport
from toolchain.precision import LoweredModel
from toolchain.verify import ParityReport, VerifyOptions, verify_callables
from toolchain.watchdog import run_bounded


def _ort_runner(model: onnx.ModelProto, integer_reference: bool = False):
    from toolchain.runtime import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_model(model, integer_reference=integer_reference)


def _require_onnx_suffix(output: Path, source: Path | None) -> None:
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"output '{output}' must end in .onnx")
    check_writable_destination(output)
    refuse_clobbering(output, {"the source model": source})


@dataclass
class ConvertResult:
    output: Path
    files: list[Path]
    source_format: str
    framework: str
    framework_version: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    opset: int
    parity: list[ParityReport]
    notes: list[str]
    seconds: float


def convert(source: Path | None, output: Path, options: ConvertOptions,
            verify: VerifyOptions = VerifyOptions()) -> ConvertResult:
    """Ingest ``source`` into ONNX at ``output``, verified against the source framework."""
    started = time.perf_counter()
    _require_onnx_suffix(output, source)
    ingested = ingest(source, options)
    model = ingested.model
    inputs = graph_inputs(model)
    reference = ingested.reference
    if ingested.framework != "onnx":  # TensorFlow and PyTorch cannot be asked to stop a run: wait apart from it
        def reference(feed: Feed, run=ingested.reference, runtime=ingested.describe_reference()) -> Feed:
            return run_bounded(lambda: run(feed), runtime)
    parity = verify_callables(reference, _ort_runner(model).run, inputs, verify,
                              reference=ingested.describe_reference(),
                              candidate="ONNX Runtime") if verify.enabled else []
    if ingested.framework != "onnx":  # a passthrough keeps the user's producer metadata
        model.producer_name, model.producer_version = "edgekiln", tool_versions()["edgekiln"]
    files = save_onnx(model, output)
    return ConvertResult(output, files, ingested.source_format, ingested.framework, ingested.framework_version,
                         inputs, graph_outputs(model), opset_version(model), parity, ingested.notes,
                         time.perf_counter() - started)


@dataclass
class OptimizeResult:
    output: Path
    passes: list[PassReport]
    parity: list[ParityReport]
    seconds: float


def _sample_loader(calibration: Any | None):
    """model -> (calibration feeds, held-out feeds, held-out labels) from ``calibration``, for passes that judge
    themselves on samples (None without --calib)."""
    if calibration is None:
        return None

    def load(model: onnx.ModelProto) -> tuple[list, list | None, Any]:
        from toolchain.passes.calibrate import load_calibration_set

        info, samples = load_calibration_set(model, calibration)
        batch = 1 if isinstance(info.shape[0], int) else 16
        holdout = list(samples.feeds(info.name, "holdout", batch)) or None
        return list(samples.feeds(info.name, "calibration", batch)), holdout, samples.holdout_labels

    return load


def optimize(model_path: Path, output: Path, *, passes: dict[str, Any], calibration: Any | None = None,
             verify: VerifyOptions = VerifyOptions()) -> OptimizeResult:
    """Run the passes named in ``passes`` (name -> config, ``toolchain.passes.registry``) in the table's order,
    verified against the input in ONNX Runtime: exactly for exact passes, by cosine for the lossy ones.
    """
    from toolchain.passes.registry import PassContext, chosen

    started = time.perf_counter()
    entries = chosen({name: True for name in passes})
    if not entries:
        raise UsageError("nothing to do: choose at least one pass (--simplify, --lowrank, --fp16, --dynamic-int8)")
    _require_onnx_suffix(output, model_path)
    original = load_onnx(model_path)
    model, reports = original, []
    context = PassContext(_sample_loader(calibration))
    for entry in entries:
        model, report = entry.runner()(model, passes[entry.name], context)
        reports.append(report)
    is_lossy = any(entry.lossy for entry in entries)
    for config in passes.values():
        budget = getattr(config, "cosine_budget", None)
        if budget is not None:  # a pass's own, looser budget (low-rank's) is what the user asked to be checked against
            verify = replace(verify, min_cosine=min(verify.min_cosine, budget))
    parity = verify_callables(_ort_runner(original).run, _ort_runner(model).run, graph_inputs(original), verify,
                              reference="input model", candidate="optimized model",
                              lossy=is_lossy) if verify.enabled else []
    save_onnx(model, output)
    return OptimizeResult(output, reports, parity, time.perf_counter() - started)


def refuse_foreign_folder(out_dir: Path, marker: str = "manifest.json") -> None:
    """Refuse to replace a non-empty folder that edgekiln did not make (it has no ``marker`` file)."""
    # Output folders are replaced as a whole; never do that to a folder the user filled themselves.
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / marker).is_file():
        raise OutputError(f"'{out_dir}' exists and is not an edgekiln artifact; refusing to replace it",
                          hint="Choose a new or empty output folder.")


def _checked_backend(name: str, precision: str, model: onnx.ModelProto):
    from backends.registry import get_backend

    backend = get_backend(name)
    available, reason = backend.is_available()
    if not available:
        raise MissingDependencyError(f"backend '{name}' is not usable here: {reason}")
    if precision not in backend.capabilities.precisions:
        raise UsageError(f"backend '{name}' does not support precision '{precision}'; it supports "
                         f"{', '.join(backend.capabilities.precisions)}")
    low, high = backend.capabilities.opset_range
    if not low <= opset_version(model) <= high:
        raise UsageError(f"backend '{name}' accepts opsets {low}-{high}, the model uses {opset_version(model)}",
                         hint="Convert again with --opset.")
    return backend


@dataclass
class CompileResult:
    artifact: Artifact
    parity: list[ParityReport]
    seconds: float


def compile_artifact(model_path: Path, out_dir: Path, backend_name: str, options: Any,
                     verify: VerifyOptions = VerifyOptions(), stages: dict[str, Any] | None = None,
                     quant: Any | None = None) -> CompileResult:
    """Compile an ONNX model with a backend into an artifact folder, verified against ONNX Runtime.

    For backends that take their precision as ONNX passes (ONNX Runtime), the
    model is first lowered to ``options.precision`` (see ``toolchain.precision``);
    the artifact is then checked exactly against the lowered model, and the
    lowered model against the FP32 input by cosine (INT8 also by its accuracy guard).
    """
    from backends.registry import find_target
    from toolchain.precision import LOSSY, QuantOptions, apply_precision

    started = time.perf_counter()
    check_writable_destination(out_dir)
    refuse_clobbering(out_dir, {"the source model": model_path, "the --calib folder": verify.calib})
    refuse_foreign_folder(out_dir)
    source = load_onnx(model_path)
    backend = _checked_backend(backend_name, options.precision, source)
    inputs = graph_inputs(source)
    # Stored so a device applies exactly the preprocessing used for verification (and calibration).
    preprocess = image_preprocess_or_none(verify.preprocess, inputs)
    quant = quant or QuantOptions()
    lossy = options.precision in LOSSY
    # Static INT8 is only meaningful on in-distribution data: check it on the images, not random noise.
    static_int8 = options.precision == "int8"
    lossy_verify = replace(verify, random_inputs=not static_int8)
    with tempfile.TemporaryDirectory(prefix="edgekiln-lower-") as work, atomic_directory(out_dir) as staging:
        via_onnx = backend.capabilities.precision_via_onnx
        profile = find_target(options.target) if options.target else None  # plugins' targets too
        lowered = (apply_precision(model_path, options.precision, Path(work), target=profile, quant=quant)
                   if via_onnx else LoweredModel(model_path))
        model = source if lowered.path == model_path else load_onnx(lowered.path)
        parity = []
        if lossy and via_onnx:
            # An INT8 model made for another CPU (or TensorRT) is checked with exact integer arithmetic.
            exact = lowered.details.get("quantize", {}).get("guard_runtime") == "reference"
            parity += verify_callables(_ort_runner(source).run, _ort_runner(model, exact).run, inputs, lossy_verify,
                                       reference="FP32 model", candidate=f"{options.precision} model", lossy=True,
                                       advisory=static_int8)
        compiled = backend.compile(lowered.path, replace(options, quant=quant), staging)
        compiled.details.setdefault("notes", []).extend(lowered.details.get("notes", []))
        for extra in lowered.extra_files:
            shutil.copyfile(extra, staging / extra.name.replace("model.int8.", ""))
        runnable, why_not = backend.can_run()
        if runnable:
            # A backend that quantized itself is compared with the FP32 model, by cosine on real images.
            own_lossy = lossy and not via_onnx
            with backend.load(staging / compiled.model_file, compiled.runtime_options) as runner:
                parity += verify_callables(_ort_runner(model).run, runner.run, inputs,
                                           lossy_verify if own_lossy else verify, lossy=own_lossy,
                                           reference="ONNX model in ONNX Runtime", candidate=f"{backend_name} artifact",
                                           advisory=own_lossy and static_int8)
        else:
            compiled.details["not_verified_here"] = why_not
        if static_int8:
            compiled.details["notes"].extend(int8_fidelity_notes(parity, guarded=quant.budget is not None))
        manifest = {
            "backend": backend_name,
            "model_file": compiled.model_file,
            "model_sha256": sha256_path(staging / compiled.model_file),  # checked whenever the artifact is opened
            "source": {"file": model_path.name, "sha256": sha256_path(model_path)},
            "tool": tool_versions(),
            "sdk": sdk_versions(SDK_DISTRIBUTIONS + tuple(d for d in backend.distributions
                                                         if d not in SDK_DISTRIBUTIONS)),
            "options": {"precision": options.precision, "target": options.target, **options.extra},
            "runtime_options": compiled.runtime_options,
            "inputs": [_tensor_dict(i) for i in inputs],
            "outputs": [_tensor_dict(o) for o in graph_outputs(model)],
            "preprocess": preprocess,
            "metrics": {"verify": [p.to_dict() for p in parity], "details": compiled.details,
                        "precision": lowered.details, "stages": stages or {}},
            "timings": {"compile_seconds": round(time.perf_counter() - started, 3)},
            # The machine whose kernels verified (and, for CPU targets, chose the INT8 scheme of) this artifact.
            "host": host_cpu().to_dict(),
        }
        write_manifest(staging, manifest)
    return CompileResult(Artifact.open(out_dir), parity, time.perf_counter() - started)


def int8_fidelity_notes(parity: list[Any], guarded: bool) -> list[str]:
    """Warnings for static INT8: built without the guard (``--no-guard``: delivered as asked, with its
    figures), or under ``--min-cosine`` on the verification images where the guard's held-out verdict
    (which counts such samples against ``--max-drop``) is the one that decides."""
    lossy = [r for r in parity if r.min_cosine is not None]
    if not lossy:
        return [] if guarded else ["warning: INT8 built without the accuracy guard (--no-guard) and not compared "
                                   "with FP32 (no verification images)"]
    measured = (f"cosine with FP32 on {lossy[0].inputs}: " + "; ".join(f"{o.name} {o.cosine:.4f}" for r in lossy
                                                                        for o in r.outputs))
    floor = f"--min-cosine {lossy[0].min_cosine:g}"
    if not guarded:
        return [f"warning: INT8 built without the accuracy guard (--no-guard): it was not checked on held-out "
                f"samples; {measured} ({floor})"]
    if all(r.passed for r in lossy):
        return []
    return [f"warning: {measured}, under {floor}; the accuracy guard's verdict on the held-out samples decides "
            f"(it passed)"]


def _tensor_dict(info: TensorInfo) -> dict[str, Any]:
    return {"name": info.name, "shape": list(info.shape), "dtype": str(info.dtype)}

"""The code behind each kind of build stage. Every step writes into the build's staging folder and
returns a JSON record; the record (and the files the step wrote) is what the stage cache keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toolchain.build_plan import AGREEMENT_SAMPLES, BuildRequest, PlannedStage
from toolchain.verify import ParityReport

Record = dict[str, Any]


@dataclass
class StepContext:
    """What steps share while a build runs: the staging folder and the models made so far."""

    request: BuildRequest
    staging: Path
    model: str = ""  # the model later stages start from, relative to staging
    reference: str = ""  # the FP32 model every variant is compared with

    def path(self, relative: str) -> Path:
        return self.staging / relative



def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _worst(parity: list[ParityReport]) -> tuple[float | None, float | None]:
    outputs = [o for report in parity for o in report.outputs]
    if not outputs:
        return None, None
    return max(o.max_abs for o in outputs), min(o.cosine for o in outputs)


def _model_record(stage: PlannedStage, context: StepContext, output: Path, seconds: float,
                  parity: list[ParityReport], notes: list[str]) -> Record:
    worst_abs, worst_cos = _worst(parity)
    relative = output.relative_to(context.staging).as_posix()
    return {"stage": stage.name, "output": relative, "seconds": round(seconds, 3), "size_bytes": size_of(output),
            "worst_max_abs": worst_abs, "worst_cosine": worst_cos, "notes": notes, "model": relative}


def convert_step(stage: PlannedStage, context: StepContext) -> Record:
    from toolchain import commands

    request = context.request
    result = commands.convert(request.source, context.path("model.onnx"), settings=request.source_settings,
                              verify=request.verify_settings)
    return _model_record(stage, context, result.output, result.seconds, result.parity, list(result.notes))


def simplify_step(stage: PlannedStage, context: StepContext) -> Record:
    from toolchain import commands

    result = commands.optimize(context.path(context.model), context.path("model.simplified.onnx"),
                               passes={"simplify": None}, verify=context.request.verify_settings)
    return _model_record(stage, context, result.output, result.seconds, result.parity,
                         [r.summary() for r in result.passes])


def pass_step(stage: PlannedStage, context: StepContext) -> Record:
    """One pass of the table (the stage's name); a model it finds nothing to change in is passed on unchanged."""
    from toolchain import commands
    from toolchain.passes.config import NothingToDoError

    request = context.request
    try:
        result = commands.optimize(context.path(context.model), context.path(f"model.{stage.name}.onnx"),
                                   passes={stage.name: request.passes[stage.name]}, verify=request.verify_settings,
                                   samples=request.samples)
    except NothingToDoError as exc:
        return {"stage": stage.name, "output": "-", "seconds": 0.0, "size_bytes": 0, "worst_max_abs": None,
                "worst_cosine": None, "notes": [f"skipped: {exc.message}"], "model": context.model}
    return _model_record(stage, context, result.output, result.seconds, result.parity,
                         [r.summary() for r in result.passes])


def compile_step(stage: PlannedStage, context: StepContext) -> Record:
    from toolchain import commands

    variant = stage.variant
    assert variant is not None
    request = context.request
    compiled = commands.compile(context.path(context.model), context.path(variant.name), target=variant.target.name,
                                precision=variant.precision, verify=request.verify_settings, samples=request.samples,
                                quant=request.quant,
                                backend_settings=request.backend_settings_for(variant.target.backend))
    record = _model_record(stage, context, compiled.artifact.path, compiled.seconds, compiled.parity, [])
    details = compiled.artifact.manifest["metrics"].get("details", {})
    record.pop("model")
    record["target"] = {"target": variant.target.name, "backend": variant.target.backend, "artifact": variant.name,
                        "precision": details.get("precision", variant.precision),
                        "size_bytes": record["size_bytes"], "model_bytes": size_of(compiled.artifact.model_path),
                        "notes": list(details.get("notes", []))}
    if details.get("mcu"):
        record["target"]["mcu"] = _mcu_budget(details["mcu"])
    if compiled.artifact.guard:
        record["target"]["held_out"] = _held_out(compiled.artifact.guard)
    return record


def _held_out(guard: dict[str, Any]) -> dict[str, Any]:
    """The accuracy guard's verdict on the held-out samples (never used for calibration) for the report."""
    quality = ((guard.get("attempts") or [{}])[-1]).get("quality") or {}
    return {"samples": quality.get("samples"), "top1_agreement": quality.get("top1_agreement"),
            "accuracy_fp32": quality.get("accuracy_reference"), "accuracy": quality.get("accuracy_candidate"),
            "min_cosine": quality.get("min_cosine"), "passed": guard.get("passed")}


def _mcu_budget(mcu: dict[str, Any]) -> dict[str, Any]:
    """What a microcontroller must hold: the model in flash, the tensor arena in RAM (and the whole firmware
    where it was linked and run on a Cortex-M4)."""
    arena, firmware = mcu.get("arena") or {}, mcu.get("firmware") or {}
    return {"model_flash_bytes": mcu.get("flash_bytes"), "arena_bytes": arena.get("total"),
            "arena_measured_on": arena.get("measured_on"), "arena_estimate_bytes": arena.get("estimate"),
            "firmware_flash_bytes": firmware.get("flash_bytes"), "firmware_ram_bytes": firmware.get("ram_bytes")}


def _latency(artifact: Path, iterations: int) -> dict[str, Any] | None:
    from toolchain.bench import benchmark

    if iterations <= 0:
        return None
    from toolchain.hostcpu import host_cpu

    timing = benchmark(artifact, iterations=iterations)
    return {"p50_ms": timing.p50_ms, "p90_ms": timing.p90_ms, "iterations": timing.iterations,
            "measured_on": host_cpu().describe(), "threads": timing.threads, "runtime": timing.backend}


def _agreement(context: StepContext, artifact: Path) -> dict[str, Any] | None:
    from toolchain.compare import compare_artifacts

    request = context.request
    comparison = compare_artifacts([context.path(context.reference), artifact], calib=request.calib,
                                   count=AGREEMENT_SAMPLES, seed=request.verify.seed,
                                   preprocess=request.verify.preprocess)[0]
    first = comparison.outputs[0]
    return {"top1_agreement": first.top_k_agreement.get(1), "min_cosine": min(o.cosine for o in comparison.outputs),
            "samples": comparison.samples, "inputs": "images" if request.calib else "random"}


def _per_layer(context: StepContext, artifact: Path, notes: list[str]) -> list[dict[str, Any]] | None:
    """Where an ONNX variant departs from the FP32 model, layer by layer (ONNX Runtime artifacts only)."""
    from toolchain.artifact import Artifact
    from toolchain.compare import comparison_feeds, per_layer

    opened = Artifact.open(artifact)
    if opened.model_path.suffix != ".onnx":
        return None
    request = context.request
    reference = Artifact.open(context.path(context.reference))
    feeds = comparison_feeds(reference, request.calib, 8, request.verify.seed, request.verify.preprocess)
    try:
        rows = per_layer(reference.model_path, opened.model_path, feeds)
    except Exception as exc:  # noqa: BLE001 - a diagnostic; its failure must not fail the build
        notes.append(f"per-layer comparison skipped: {exc}")
        return None
    return [{"tensor": r.tensor, "node": r.producer, "op": r.op_type, "relative_error": r.relative_error,
             "cosine": r.cosine} for r in rows]


def measure_step(stage: PlannedStage, context: StepContext) -> Record:
    """Accuracy, latency and (for variants) agreement with the FP32 model and per-layer error."""
    from backends.registry import get_backend
    from toolchain.evaluate import evaluate

    started = time.perf_counter()
    request = context.request
    variant = stage.variant
    artifact = context.path(variant.name if variant else context.reference)
    measured: Record = {"accuracy": None, "latency": None, "agreement": None, "per_layer": None, "notes": []}
    runnable, why_not = get_backend(variant.target.backend).can_run() if variant else (True, "")
    if not runnable:  # e.g. a Jetson bundle: its engine is built and checked on the device
        measured["notes"].append(f"not run here: {why_not}")
    else:
        if request.labels is not None:
            measured["accuracy"] = evaluate(artifact, request.labels, request.verify.preprocess).to_dict()
        measured["latency"] = _latency(artifact, request.bench_iterations)
        if variant is not None and request.verify.enabled:  # agreement and per-layer error are checks too
            measured["agreement"] = _agreement(context, artifact)
            if variant.precision != "fp32" or context.model != context.reference:
                measured["per_layer"] = _per_layer(context, artifact, measured["notes"])
    if variant is None:
        measured["size_bytes"] = size_of(artifact)
    return {"stage": stage.name, "output": "-", "seconds": round(time.perf_counter() - started, 3), "size_bytes": 0,
            "worst_max_abs": None, "worst_cosine": None, "notes": list(measured.pop("notes")), "measured": measured}


STEPS: dict[str, Callable[[PlannedStage, StepContext], Record]] = {
    "convert": convert_step, "simplify": simplify_step, "pass": pass_step, "compile": compile_step,
    "measure": measure_step,
}

"""The plan of an ``edgekiln build``: its stages in order, what each does, and each one's cache key.

Planning reads inputs (to hash them) but runs and writes nothing, so ``--dry-run`` can print
the plan with what is cached, and the build can then execute the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.hostcpu import host_cpu
from toolchain.digests import content_digest, model_class_digest, stage_key, verification_images_digest
from toolchain.options import to_keywords
from toolchain.settings import QuantSettings, SampleSettings, SourceSettings, VerifySettings
from toolchain.targets import Variant
from toolchain.verify import VerifyOptions

# Images the agreement check (artifact vs FP32 reference) reads from --calib.
AGREEMENT_SAMPLES = 32


@dataclass
class BuildRequest:
    """Everything a build depends on, already validated."""

    source: Path | None
    output: Path
    variants: list[Variant]
    source_settings: SourceSettings
    verify_settings: VerifySettings
    labels: Path | None = None
    simplify: bool = True
    bench_iterations: int = 50
    samples: SampleSettings = SampleSettings()
    quant: QuantSettings = QuantSettings()
    passes: dict[str, Any] = field(default_factory=dict)
    """The passes asked for (``lowrank``), each with its config, in the pass table's order."""
    backend_settings: dict[str, Any] = field(default_factory=dict)
    """Backend options the user set (keyword -> value); each variant gets those of its backend."""
    fail_fast: bool = False
    """Stop at the first failing target and write nothing (else the others are still delivered)."""

    verify: VerifyOptions = field(init=False)
    """The checks ``verify_settings`` ask for, as the stages take them."""

    def __post_init__(self) -> None:
        from toolchain.commands import verify_options

        self.verify = verify_options(self.verify_settings)

    @property
    def calib(self) -> Path | None:
        return self.verify_settings.calib

    @property
    def reads_samples(self) -> bool:
        """Whether one of its passes judges itself on the calibration samples."""
        from toolchain.passes.registry import pass_entry

        return self.calib is not None and any(pass_entry(name).reads_samples for name in self.passes)

    def backend_settings_for(self, backend: str) -> dict[str, Any]:
        from backends.registry import backend_option_owners

        owners = backend_option_owners()
        return {k: v for k, v in self.backend_settings.items() if owners.get(k) == backend}


@dataclass
class PlannedStage:
    """One step of the plan. ``kind`` picks the code that runs it (``toolchain.build_steps``)."""

    name: str
    kind: str
    key: str
    description: str
    variant: Variant | None = None
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.name, "kind": self.kind, "key": self.key, "cached": self.cached,
                "description": self.description}


def _verify_inputs(request: BuildRequest) -> dict[str, Any]:
    verify = request.verify
    if not verify.enabled:
        return {"enabled": False}
    return {"enabled": True, "atol": verify.atol, "rtol": verify.rtol, "seed": verify.seed,
            "preprocess": verify.preprocess,
            "images": verification_images_digest(verify.calib, verify.image_samples, verify.seed)}


def _calibration_inputs(request: BuildRequest) -> dict[str, Any] | None:
    """The whole calibration set: what calibration (INT8 ranges, low-rank budgets) reads."""
    if request.calib is None:
        return None
    return {"data": content_digest(request.calib), "calib_size": request.samples.calib_size,
            "holdout": request.samples.holdout, "seed": request.verify.seed, "preprocess": request.verify.preprocess}


def _source_inputs(request: BuildRequest) -> dict[str, Any]:
    options = to_keywords(request.source_settings)
    weights = options.pop("weights", None)
    source = request.source
    return {"source": content_digest(source), "source_name": source.name if source else None,
            "weights": content_digest(weights), "model_class_source": model_class_digest(options.get("model_class")),
            "options": options}


def source_label(request: BuildRequest, short: bool = False) -> str:
    """What the build converts, for the plan and the report: the source file, the user's model class and
    weights, or the bundled example (which is itself a model class with weights)."""
    from toolchain.examples import fashion_mnist as example

    if request.source is not None:
        return request.source.name if short else str(request.source)
    model_class = request.source_settings.model_class
    if model_class and model_class != example.MODEL_CLASS:
        weights = request.source_settings.weights
        return f"{model_class}" + (f" with weights {Path(weights).name}" if weights else "")
    return "the bundled Fashion-MNIST example" if short else "bundled Fashion-MNIST example"


def _convert_stage(request: BuildRequest, verify: dict[str, Any]) -> PlannedStage:
    what = source_label(request, short=True)
    key = stage_key("convert", ("convert",), {**_source_inputs(request), "verify": verify})
    return PlannedStage("convert", "convert", key, f"ingest {what} into ONNX and verify it against the source")


def _pass_stage(request: BuildRequest, name: str, upstream: str, verify: dict[str, Any]) -> PlannedStage:
    from toolchain.passes.registry import pass_entry

    entry, config = pass_entry(name), request.passes[name]
    key = stage_key(name, (), {"upstream": upstream, "options": to_keywords(config) if config else {},
                               "calibration": _calibration_inputs(request) if entry.reads_samples else None,
                               "verify": verify})
    return PlannedStage(name, "pass", key, (config.describe() if config else "") or entry.help)


def _device_checks(variant: Variant) -> dict[str, str] | None:
    if variant.target.backend != "tflite":
        return None
    from backends.tflite.micro_build import device_check_environment

    return device_check_environment(variant.target.name)


def _compile_stage(request: BuildRequest, variant: Variant, upstream: str, verify: dict[str, Any]) -> PlannedStage:
    backend = variant.target.backend
    calibrates = variant.precision == "int8" or backend == "tensorrt"  # TensorRT bundles carry samples and caches
    quant = to_keywords(request.quant)
    quant["method"] = quant["method"] or "minmax"  # the default, spelled out or not, is one key
    quant.update(calib_size=request.samples.calib_size, holdout=request.samples.holdout)
    key = stage_key("compile", (backend,), {
        "upstream": upstream, "target": variant.target.name, "precision": variant.precision, "quant": quant,
        "backend_options": request.backend_settings_for(backend),
        "calibration": _calibration_inputs(request) if calibrates else None, "verify": verify,
        # INT8 schemes and the kernels that check them depend on the CPU (x86 without VNNI: 7-bit weights).
        "host_isa": host_cpu().int8_isa,
        # A compile cached where TFLM/QEMU were absent must not stand in for one that runs on them.
        "device_checks": _device_checks(variant)})
    detail = f"{backend}, {variant.precision}"
    if variant.precision == "int8" and request.calib is not None:
        detail += f", INT8 calibration from {request.calib.name}/ with the accuracy guard"
    return PlannedStage(f"compile {variant.name}", "compile", key, detail, variant)


def _measure_stage(request: BuildRequest, variant: Variant | None, upstream: str, reference: str) -> PlannedStage:
    from backends.registry import get_backend

    runnable, why_not = get_backend(variant.target.backend).can_run() if variant else (True, "")
    parts = [] if runnable else [f"not run here ({why_not.split(' (')[0]}): size only"]
    if runnable and request.labels is not None:
        parts.append(f"accuracy on {request.labels.name}/")
    if runnable and variant is not None and request.verify.enabled:
        parts.append("agreement with the FP32 model")
    if runnable and request.bench_iterations > 0:
        parts.append(f"latency ({request.bench_iterations} runs)")
    key = stage_key("measure", (variant.target.backend,) if variant else ("onnxruntime",), {
        "upstream": upstream, "reference": reference, "labels": content_digest(request.labels),
        "host": host_cpu().describe(),  # latencies are this machine's
        "bench_iterations": request.bench_iterations, "runnable": runnable, "checks": request.verify.enabled,
        "agreement_images": verification_images_digest(request.calib, AGREEMENT_SAMPLES, request.verify.seed)
        if variant else None,
        "preprocess": request.verify.preprocess})
    name = f"measure {variant.name}" if variant else "measure reference"
    return PlannedStage(name, "measure", key, ", ".join(parts) or "size only", variant)


def require_inputs(request: BuildRequest) -> None:
    """Missing inputs fail before planning: hashing a missing path would only fail much later."""
    from toolchain.errors import InputFileError

    named = {"source model": request.source, "--weights file": request.source_settings.weights,
             "--calib folder": request.calib, "--labels folder": request.labels}
    for what, path in named.items():
        if path is not None and not Path(path).exists():
            raise InputFileError(f"{what} '{path}' does not exist")
    if request.labels is not None:
        from calibration.folder import labelled_folder

        labelled_folder(request.labels)  # a folder without class sub-folders fails now, not after compiling


def plan_build(request: BuildRequest) -> list[PlannedStage]:
    """Stages in execution order: convert, simplify, the passes asked for (low-rank), then compile + measure per
    variant."""
    require_inputs(request)
    verify = _verify_inputs(request)
    stages = [_convert_stage(request, verify)]
    if request.simplify:
        stages.append(PlannedStage("simplify", "simplify",
                                   stage_key("simplify", ("simplify",), {"upstream": stages[-1].key, "verify": verify}),
                                   "constant folding and redundant-node removal, re-verified"))
    reference = stages[-1].key  # the FP32 model every variant is compared with
    stages.append(_measure_stage(request, None, reference, reference))
    model = reference
    for name in request.passes:
        stages.append(_pass_stage(request, name, model, verify))
        model = stages[-1].key
    for variant in request.variants:
        compiled = _compile_stage(request, variant, model, verify)
        stages += [compiled, _measure_stage(request, variant, compiled.key, reference)]
    return stages

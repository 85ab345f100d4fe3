"""``TensorRTBackend.compile``: prepare the ONNX, quantize if asked, write the bundle, build the engine if possible.

Each step checks its own numbers in ONNX Runtime here (TensorRT itself may be
absent): the prepared model against the original, the TensorRT-form QDQ model
against the guarded one calibrate produced, and the reference outputs the device
will compare its engine with.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from backends.base import CompiledFiles, CompileOptions
from backends.tensorrt.bundle import BundleContents, check_for, write_bundle
from backends.tensorrt.devices import TensorRTDevice, cache_header_version, device_for, parse_version
from backends.tensorrt.prepare import prepare_for_device
from backends.tensorrt.qdq import qdq_problems, to_tensorrt_qdq
from backends.tensorrt.settings import BuildSettings, resolve_settings
from toolchain.errors import ConversionError, UsageError
from toolchain.frontends.base import Feed
from toolchain.onnx_io import TensorInfo, graph_inputs, graph_outputs, load_onnx, save_onnx
from toolchain.verify import ParityReport, run_and_compare

MODEL = "model.onnx"
INT8_MODEL = "model.int8.onnx"
CACHE = "calibration.cache"
RANGES = "ranges.json"
SAMPLE_COUNT = 4


@dataclass
class Int8Files:
    engine_source: str
    calibration_cache: str | None
    details: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def compile_bundle(onnx_path: Path, options: CompileOptions, out_dir: Path, *, build_here: bool) -> CompiledFiles:
    from toolchain import __version__
    from toolchain.precision import QuantOptions

    device = device_for(options.target)
    source = load_onnx(onnx_path)
    inputs = graph_inputs(source)
    settings = resolve_settings(device, options.precision, dict(options.extra), inputs)
    quant = options.quant or QuantOptions()
    prepared = prepare_for_device(source, parse_version(settings.tensorrt_version),
                                  device.max_opset(options.extra.get("tensorrt_version")), device.target)
    save_onnx(prepared.model, out_dir / MODEL)
    feeds, feeds_label = sample_feeds(source, inputs, quant)
    parity = [_checked(run_and_compare(feeds, _ort(source), _ort(prepared.model), reference="the input model",
                                       candidate=f"the model prepared for {device.target}", inputs=feeds_label))]
    int8 = _int8(out_dir, settings, quant, feeds) if settings.precision == "int8" else None
    engine_source = int8.engine_source if int8 else MODEL
    reference = load_onnx(out_dir / engine_source)
    contents = BundleContents(
        engine_source=engine_source, reference_model=engine_source,
        calibration_cache=int8.calibration_cache if int8 else None, inputs=inputs,
        outputs=graph_outputs(reference), feeds=feeds, references=[_ort(reference)(f) for f in feeds],
        check=check_for(settings.precision, settings.int8_mode, settings.min_cosine),
        preprocess=_preprocess(quant, inputs), extra_files=[RANGES] if int8 else [])
    bundle = write_bundle(out_dir, device, settings, contents, __version__)
    notes = [*settings.notes, *prepared.notes, *(int8.notes if int8 else [])]
    details = _details(device, settings, prepared, parity, int8, bundle, feeds_label, notes)
    model_file = engine_source
    if build_here:
        model_file = _build_here(out_dir, bundle, settings)
    details["engine"] = {"built_here": build_here, "file": model_file if build_here else None}
    return CompiledFiles(model_file=model_file, runtime_options={"target": device.target}, details=details)


def sample_feeds(model: onnx.ModelProto, inputs: list[TensorInfo], quant: Any) -> tuple[list[Feed], str]:
    """A few real inputs when calibration samples were given (images or arrays), else seeded random ones."""
    from toolchain.feeds import image_feeds, random_feeds

    calibration = getattr(quant, "calibration", None)
    if calibration is not None:
        from calibration.dataset import is_array_source

        if not is_array_source(calibration.source):
            feeds = image_feeds(inputs, calibration.source, count=SAMPLE_COUNT, seed=calibration.seed,
                                preprocess=calibration.preprocess)
            return feeds, f"{len(feeds)} images from {calibration.source.name}"
        from toolchain.passes.calibrate import load_calibration_set

        info, samples = load_calibration_set(model, calibration)
        rows = samples.holdout if len(samples.holdout) else samples.calibration
        feeds = [{info.name: rows[i:i + 1]} for i in range(min(SAMPLE_COUNT, len(rows)))]
        return feeds, f"{len(feeds)} samples from {calibration.source.name}"
    return random_feeds(inputs, count=2, seed=0), "2 seeded random inputs"


def _ort(model: onnx.ModelProto):
    from backends.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner.from_model(model).run


def _checked(report: ParityReport) -> ParityReport:
    report.raise_if_failed()
    return report


def _preprocess(quant: Any, inputs: list[TensorInfo]) -> dict[str, Any] | None:
    from toolchain.feeds import image_preprocess_or_none

    calibration = getattr(quant, "calibration", None)
    return image_preprocess_or_none(calibration.preprocess if calibration else None, inputs)


def _int8(out_dir: Path, settings: BuildSettings, quant: Any, feeds: list[Feed]) -> Int8Files:
    """Guarded INT8 from the prepared model: a TensorRT-form QDQ model, or a calibration cache (implicit INT8)."""
    from toolchain.passes.calibrate import calibrate
    from toolchain.passes.quantize import QuantizeConfig
    from toolchain.precision import require_samples

    require_samples(quant.calibration)
    config = QuantizeConfig.for_target(settings.target, **quant.overrides)
    if (config.activation_type, config.weight_type) != ("int8", "int8") or not (
            config.activation_symmetric and config.weight_symmetric):
        raise UsageError("TensorRT INT8 is symmetric int8 for weights and activations; drop the "
                         "--activation-type/--symmetric overrides")
    cache = out_dir / CACHE if settings.int8_mode == "cache" else None
    with tempfile.TemporaryDirectory(prefix="edgekiln-trt-int8-") as tmp:
        result = calibrate(out_dir / MODEL, Path(tmp) / INT8_MODEL, quant.calibration, config, quant.budget,
                           tensorrt_cache=cache, tensorrt_version=cache_header_version(settings.tensorrt_version))
        shutil.copyfile(result.ranges_path, out_dir / RANGES)
        details = {"quantize": config.model_dump(mode="json"), "calibration": result.calibration_summary,
                   "guard": result.guard.to_dict() if result.guard else None, "mode": settings.int8_mode}
        if settings.int8_mode == "cache":
            return Int8Files(MODEL, CACHE, details, _cache_notes(result))
        guarded = load_onnx(result.output)
    qdq, counts = to_tensorrt_qdq(guarded)
    problems = qdq_problems(qdq)
    if problems:
        raise ConversionError(f"the INT8 model breaks TensorRT's quantization rules: {'; '.join(problems[:3])}")
    details["tensorrt_form"] = {**counts, "parity": _checked(run_and_compare(
        feeds, _ort(guarded), _ort(qdq), reference="the guarded QDQ model", candidate="its TensorRT form",
        inputs=f"{len(feeds)} samples", atol=1e-5, rtol=1e-4)).to_dict()}
    save_onnx(qdq, out_dir / INT8_MODEL)
    return Int8Files(INT8_MODEL, None, details)


def _cache_notes(result: Any) -> list[str]:
    kept = result.guard.final.kept_float if result.guard else None
    if not kept:
        return []
    return [f"the accuracy guard kept {len(kept)} layer(s) in float, but implicit INT8 (calibration cache) lets "
            "TensorRT choose INT8 layers itself; use int8_mode 'qdq' to keep them float on the device"]


def _build_here(out_dir: Path, bundle: dict[str, Any], settings: BuildSettings) -> str:
    """Build and store the engine with the Python API (only where tensorrt and a GPU are usable)."""
    from backends.tensorrt.builder import build_serialized_engine
    from backends.tensorrt.cache import default_engine_cache, timing_cache_path
    from backends.tensorrt.runner import current_key, write_engine

    key = current_key(out_dir, bundle)
    cache = bundle.get("calibration_cache")
    engine = build_serialized_engine(out_dir / bundle["engine_source"], settings,
                                     calibration_cache=(out_dir / cache).read_bytes() if cache else None,
                                     timing_cache=timing_cache_path(default_engine_cache(), key.tensorrt_version,
                                                                    key.gpu))
    return write_engine(out_dir / "engines", key, engine).relative_to(out_dir).as_posix()


def _details(device: TensorRTDevice, settings: BuildSettings, prepared: Any, parity: list[ParityReport],
             int8: Int8Files | None, bundle: dict[str, Any], feeds_label: str, notes: list[str]) -> dict[str, Any]:
    return {
        "target": device.target,
        "tensorrt": settings.tensorrt_version,
        "requested_precision": settings.requested_precision,
        "precision": settings.precision,
        "int8_mode": settings.int8_mode,
        "notes": notes,
        "prepare": {"opset_from": prepared.opset_from, "opset_to": prepared.opset_to,
                    "parity": [p.to_dict() for p in parity]},
        "int8": int8.details if int8 else None,
        "bundle": {"engine_source": bundle["engine_source"], "build_options": bundle["build_options"],
                   "trtexec": " ".join(bundle["trtexec"]), "samples": feeds_label, "check": bundle["check"]},
    }

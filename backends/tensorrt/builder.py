"""Engine build with TensorRT's Python API; runs only where tensorrt and a GPU are present.

Written against the APIs of TensorRT 8.2 to 10.x, choosing by feature rather
than by version string where the API changed:
- network: EXPLICIT_BATCH is required before 10 and deprecated (implicit) from 10;
- workspace: ``config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, bytes)`` (8.4+)
  replaces ``config.max_workspace_size`` (removed in 10);
- build: ``builder.build_serialized_network`` (8.0+), never ``build_engine`` (removed in 10);
- INT8: QDQ models need only the INT8 flag; the calibration-cache path sets
  ``config.int8_calibrator`` (deprecated in 10) with a calibrator that only reads the cache.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from backends.tensorrt.settings import BuildSettings
from toolchain.errors import ConversionError, first_line
from toolchain.lazy import require

log = logging.getLogger("edgekiln")


def build_serialized_engine(onnx_path: Path, settings: BuildSettings, *, calibration_cache: bytes | None = None,
                            timing_cache: Path | None = None) -> bytes:
    """Parse ``onnx_path``, configure the builder from ``settings`` and return the serialized engine."""
    trt = require("tensorrt", "Building a TensorRT engine")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes(), str(onnx_path)):  # the path lets it find external data
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ConversionError(f"TensorRT {trt.__version__} cannot parse '{onnx_path.name}': "
                              f"{first_line(Exception(errors[0])) if errors else 'unknown error'}")
    config = builder.create_builder_config()
    _set_workspace(trt, config, settings.workspace_mb)
    _set_precision(trt, config, settings, calibration_cache)
    _set_dla(trt, config, settings)
    _add_profile(builder, config, settings, calibrating=calibration_cache is not None)
    cache = _load_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ConversionError(f"TensorRT {trt.__version__} could not build the engine (its log above says why)")
    _save_timing_cache(config, cache, timing_cache)
    return bytes(serialized)


def _network_flags(trt: Any) -> int:
    if int(trt.__version__.split(".")[0]) >= 10:
        return 0  # explicit batch is the only mode, and the flag is deprecated
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def _set_workspace(trt: Any, config: Any, megabytes: int) -> None:
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, megabytes << 20)
    else:  # TensorRT 8.2 (Jetson Nano)
        config.max_workspace_size = megabytes << 20


def _set_precision(trt: Any, config: Any, settings: BuildSettings, calibration_cache: bytes | None) -> None:
    if settings.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # the same rule as --noTF32 in build_engine.sh
    if settings.precision == "fp16" or (settings.precision == "int8" and settings.dla_core is not None):
        config.set_flag(trt.BuilderFlag.FP16)
    if settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        if settings.int8_mode == "cache":
            if calibration_cache is None:
                raise ConversionError("implicit INT8 needs the calibration cache, and none was given")
            config.int8_calibrator = cache_calibrator(trt, calibration_cache)


def _set_dla(trt: Any, config: Any, settings: BuildSettings) -> None:
    if settings.dla_core is None:
        return
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = settings.dla_core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)  # layers the DLA cannot run go to the GPU, not an error


def _add_profile(builder: Any, config: Any, settings: BuildSettings, calibrating: bool) -> None:
    if not settings.dynamic:
        return
    profile = builder.create_optimization_profile()
    for p in settings.profiles:
        profile.set_shape(p.name, p.min, p.opt, p.max)
    config.add_optimization_profile(profile)
    if calibrating:
        config.set_calibration_profile(profile)


def _load_timing_cache(config: Any, path: Path | None) -> Any:
    if path is None:
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)  # a cache from another GPU/version is rejected, not used
    return cache


def _save_timing_cache(config: Any, cache: Any, path: Path | None) -> None:
    if cache is None or path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(bytes(config.get_timing_cache().serialize()))
    except OSError as exc:  # the timing cache only speeds up later builds
        log.warning("could not save the TensorRT timing cache %s: %s", path, exc)


def cache_calibrator(trt: Any, cache: bytes) -> Any:
    """An entropy calibrator that supplies no batches and answers with ``cache`` (the ranges edgekiln measured)."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: TensorRT must take every scale from the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return CacheCalibrator()

"""Run a TensorRT artifact here (``edgekiln run/bench/eval``): needs tensorrt, a GPU, and pycuda or cuda-python.

The artifact's model file is either an engine built at compile time or, when the
compile happened on a machine without TensorRT, the ONNX model the engine is
built from. In the second case the engine for *this* machine's key is taken from
the artifact's ``engines/`` folder (where build_engine.sh puts it) or the user
cache, or built now with the Python API and cached. A stale engine (other
TensorRT, other GPU, other model or options) never matches the key.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from backends.base import Feed, Runner
from backends.tensorrt import verify_engine as device_script
from backends.tensorrt.cache import EngineKey, cached_engine, default_engine_cache, timing_cache_path
from backends.tensorrt.settings import BuildSettings
from toolchain.errors import InputFileError, MissingDependencyError, UsageError
from toolchain.fileio import atomic_file
from toolchain.onnx_io import TensorInfo

log = logging.getLogger("edgekiln")


def current_key(folder: Path, bundle: dict[str, Any]) -> EngineKey:
    """This machine's key for the bundle in ``folder`` (imports tensorrt and asks the CUDA driver for the GPU)."""
    try:
        components = device_script.key_components(str(folder), bundle)
    except device_script.BundleError as exc:
        raise MissingDependencyError(f"cannot run a TensorRT engine here: {exc}") from exc
    return EngineKey(**components)


def engine_for(folder: Path, bundle: dict[str, Any], cache_dir: Path | None = None) -> Path:
    """The engine matching this machine's key: built by build_engine.sh, cached, or built now."""
    key = current_key(folder, bundle)
    cache_dir = cache_dir or default_engine_cache()
    for place in (folder / device_script.ENGINE_DIR, cache_dir):
        found = cached_engine(place, key)
        if found is not None:
            return found
    return _build_into(cache_dir, folder, bundle, key)


def _build_into(cache_dir: Path, folder: Path, bundle: dict[str, Any], key: EngineKey) -> Path:
    from backends.tensorrt.builder import build_serialized_engine

    settings = BuildSettings.from_dict(bundle["settings"])
    cache = bundle.get("calibration_cache")
    log.warning("building the TensorRT engine for %s (first run on this machine; cached as %s)", key.gpu,
                key.file_name)
    engine = build_serialized_engine(folder / bundle["engine_source"], settings,
                                     calibration_cache=(folder / cache).read_bytes() if cache else None,
                                     timing_cache=timing_cache_path(cache_dir, key.tensorrt_version, key.gpu))
    return write_engine(cache_dir, key, engine)


def write_engine(folder: Path, key: EngineKey, engine: bytes) -> Path:
    """Store an engine named by its key, with the key's components beside it (written last: it marks completion)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / key.file_name
    with atomic_file(path) as tmp:
        tmp.write_bytes(engine)
    with atomic_file(path.with_suffix(".json")) as tmp:
        tmp.write_text(key.to_json() + "\n")
    return path


class TensorRTRunner(Runner):
    """An engine behind the Runner interface: ONNX input/output names, ONNX dtypes."""

    def __init__(self, session: Any, inputs: list[TensorInfo], outputs: list[TensorInfo]) -> None:
        self.session = session
        self.inputs = inputs
        self.outputs = outputs

    @classmethod
    def open(cls, model_path: Path, runtime_options: dict[str, Any]) -> "TensorRTRunner":
        folder = model_path.parent if model_path.suffix == ".onnx" else model_path.parent.parent
        bundle = _bundle(folder)
        engine = model_path if model_path.suffix == ".engine" else engine_for(folder, bundle)
        _check_engine_key(engine, folder, bundle)
        session = device_script.EngineSession(str(engine))
        return cls(session, _infos(bundle["inputs"]), _infos(bundle["outputs"]))

    def run(self, feed: Feed) -> Feed:
        expected = {i.name for i in self.inputs}
        if set(feed) != expected:
            raise UsageError(f"the model takes inputs {sorted(expected)}, got {sorted(feed)}")
        outputs = self.session.run(feed)
        # TensorRT 8 returns INT64 outputs as INT32; hand back the ONNX model's dtypes.
        return {o.name: np.asarray(outputs[o.name]).astype(o.dtype, copy=False) for o in self.outputs}

    def close(self) -> None:
        self.session.close()


def _bundle(folder: Path) -> dict[str, Any]:
    try:
        return device_script.load_bundle(str(folder))
    except device_script.BundleError as exc:
        raise InputFileError(f"not a TensorRT artifact: {exc}") from exc


def _check_engine_key(engine: Path, folder: Path, bundle: dict[str, Any]) -> None:
    """An engine is used only if its stored key is this machine's key for this bundle."""
    stored = engine.with_suffix(".json")
    key = current_key(folder, bundle)
    try:
        recorded = json.loads(stored.read_text()).get("key")
    except (OSError, ValueError):
        recorded = None
    if recorded != key.value:
        raise InputFileError(f"engine '{engine.name}' was not built for this machine and bundle (TensorRT "
                             f"{key.tensorrt_version}, {key.gpu})",
                             hint="Run build_engine.sh in the artifact folder, or compile again here.")


def _infos(entries: list[dict[str, Any]]) -> list[TensorInfo]:
    return [TensorInfo(e["name"], tuple(e["shape"]), np.dtype(e["dtype"])) for e in entries]

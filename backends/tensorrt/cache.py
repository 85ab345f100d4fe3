"""The engine cache key: an engine is reused only when everything it was built from matches.

A TensorRT engine is tied to the exact TensorRT version and GPU that built it,
and of course to the model bytes and build options. The key hashes all four.
The formula lives in ``verify_engine.py`` (the script that also runs on the
device, in Python 3.6), so the key computed here and the one ``build_engine.sh``
computes on a Jetson are the same function of the same inputs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.tensorrt import verify_engine as device_script


@dataclass(frozen=True)
class EngineKey:
    source_sha256: str
    """Hash of the files the engine is built from (``sources_sha256``: the ONNX model, the calibration cache)."""
    tensorrt_version: str
    gpu: str
    build_options: dict[str, Any]

    @property
    def value(self) -> str:
        return device_script.engine_key(self.source_sha256, self.tensorrt_version, self.gpu, self.build_options)

    @property
    def file_name(self) -> str:
        return device_script.engine_file_name(self.value)

    def to_json(self) -> str:
        return json.dumps({"key": self.value, "source_sha256": self.source_sha256,
                           "tensorrt_version": self.tensorrt_version, "gpu": self.gpu,
                           "build_options": self.build_options}, indent=1, sort_keys=True)


def engine_key(source_sha256: str, tensorrt_version: str, gpu: str, build_options: dict[str, Any]) -> str:
    """The key's hex digest (see ``EngineKey``)."""
    return device_script.engine_key(source_sha256, tensorrt_version, gpu, build_options)


def sources_sha256(folder: Path, names: list[str]) -> str:
    return device_script.sources_sha256(str(folder), names)


def default_engine_cache() -> Path:
    """Per-user engine cache for engines built on this machine ($XDG_CACHE_HOME/edgekiln/tensorrt)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekiln" / "tensorrt"


def cached_engine(folder: Path, key: EngineKey) -> Path | None:
    """The engine for ``key`` in ``folder`` if present *and* its stored key matches (not merely the file name)."""
    engine = folder / key.file_name
    stored = engine.with_suffix(".json")
    if not (engine.is_file() and stored.is_file()):
        return None
    try:
        return engine if json.loads(stored.read_text()).get("key") == key.value else None
    except (OSError, ValueError):
        return None


def timing_cache_path(cache_dir: Path, tensorrt_version: str, gpu: str) -> Path:
    """One timing cache per TensorRT version and GPU: it holds measured kernel timings, valid only there."""
    import hashlib

    tag = hashlib.sha256(f"{tensorrt_version}|{gpu}".encode()).hexdigest()[:16]
    return cache_dir / f"timing-{tag}.cache"

"""What a build stage's output depends on, reduced to hashes: the stage cache's keys.

A key covers the stage's inputs by content (model files, weights, the model-class source,
calibration and label images), its options, the versions of the tools it calls, and
edgekiln's own code, so a cached result is reused only when rerunning would give the same one.
Keys chain: a stage's key includes the key of the stage that made its input, so a whole
build's plan (and which stages are cached) is known before anything runs (``--dry-run``).
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from toolchain.fileio import sha256_file, sha256_path

# Bump to invalidate every stage cache entry when the entry layout or key recipe changes.
KEY_FORMAT = 1

# Tools whose version can change a stage's output, by stage kind.
TOOLS: dict[str, tuple[str, ...]] = {
    "common": ("onnx", "onnxruntime", "numpy"),
    "convert": ("torch", "onnxscript", "tensorflow", "tf-keras", "keras", "tf2onnx"),
    "simplify": ("onnxsim", "onnxslim"),
}
"""Stage kinds not listed are backends: their tools are what each declares (``Backend.distributions``)."""


@lru_cache(maxsize=1)
def code_digest() -> str:
    """Hash of edgekiln's own Python sources: a code change must not reuse results of older code."""
    import backends
    import calibration
    import toolchain

    digest = hashlib.sha256()
    for package in (toolchain, backends, calibration):
        root = Path(package.__file__).parent
        for file in sorted(root.rglob("*.py")):
            digest.update(file.relative_to(root.parent).as_posix().encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()


def tool_versions(kinds: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions (None when absent) of the tools the given stage kinds use; reads metadata only."""
    from backends.registry import backend_distributions

    names = sorted({name for kind in ("common", *kinds)
                    for name in (TOOLS[kind] if kind in TOOLS else backend_distributions(kind))})
    return {name: _version(name) for name in names}


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def content_digest(path: Path | str | None) -> str | None:
    """Hash of a file's content or a folder's files (names and contents); None for no path."""
    if path is None:
        return None
    return sha256_path(Path(path))


def model_class_digest(reference: str | None) -> str | None:
    """Hash of the source file defining ``module:Class`` (a path or an importable module).

    Only that file is hashed, not what it imports: editing a helper module it imports is not
    noticed (use --no-cache then). Finding a module's file may import its parent packages.
    """
    if not reference:
        return None
    module, _, _ = reference.rpartition(":")
    candidate = Path(module)
    if candidate.suffix == ".py" and candidate.is_file():
        return sha256_file(candidate)
    try:
        import importlib.util

        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    origin = getattr(spec, "origin", None)
    return sha256_file(Path(origin)) if origin and Path(origin).is_file() else f"unresolved:{reference}"


def verification_images_digest(calib: Path | None, count: int, seed: int) -> str | None:
    """Hash of exactly the samples verification reads from ``calib``: the seeded choice of ``count``
    images (so editing another image of the folder does not invalidate a verified conversion)."""
    if calib is None:
        return None
    from calibration.dataset import is_array_source
    from calibration.folder import list_images, sample_files

    if is_array_source(calib):
        return content_digest(calib)
    files = list_images(calib).files
    chosen = sample_files(files, min(count, len(files)), seed=seed) if files else []
    digest = hashlib.sha256()
    digest.update("\n".join(sorted(Path(f).relative_to(calib).as_posix() for f in files)).encode())
    for file in chosen:
        digest.update(sha256_file(Path(file)).encode())
    return digest.hexdigest()


def canonical(value: Any) -> Any:
    """JSON-ready form of option values (paths as strings, tuples as lists, sorted sets)."""
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(canonical(v) for v in value)
    if isinstance(value, Path):
        return str(value)
    return value


def stage_key(stage: str, tools: tuple[str, ...], inputs: dict[str, Any]) -> str:
    """The cache key of one stage: hash of its kind, inputs, tool versions and edgekiln's code."""
    payload = {"format": KEY_FORMAT, "stage": stage, "code": code_digest(), "tools": tool_versions(tools),
               "inputs": canonical(inputs)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

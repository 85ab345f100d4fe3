"""Artifact folders: the compiled model file(s) plus ``manifest.json``.

The manifest records what the artifact was made from (source hash), with what
(tool and SDK versions), how (options, preprocessing) and what every stage
measured. Times live under ``timings`` so that everything else is reproducible.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from toolchain import __version__
from toolchain.errors import InputFileError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "edgekiln-artifact/1"

# Distribution names whose versions matter for reproducing any artifact (each backend adds its own).
SDK_DISTRIBUTIONS = ("onnx", "onnxruntime", "onnxsim", "onnxslim", "numpy", "torch", "tensorflow", "tf2onnx")


def sdk_versions(names: tuple[str, ...] = SDK_DISTRIBUTIONS) -> dict[str, str]:
    """Installed versions of the SDKs (read from package metadata, without importing them)."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def tool_versions() -> dict[str, str]:
    return {"edgekiln": __version__, "python": platform.python_version()}


@dataclass
class Artifact:
    """A compiled model folder (or a bare ONNX file, treated as an ONNX Runtime artifact)."""

    path: Path
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def backend(self) -> str:
        return self.manifest.get("backend", "onnxruntime")

    @property
    def model_path(self) -> Path:
        return self.path / self.manifest["model_file"] if self.path.is_dir() else self.path

    @property
    def runtime_options(self) -> dict[str, Any]:
        return dict(self.manifest.get("runtime_options", {}))

    @property
    def preprocess(self) -> dict[str, Any] | None:
        return self.manifest.get("preprocess")

    @property
    def guard(self) -> dict[str, Any] | None:
        """The accuracy guard's report of a lossy artifact (backends record it in one of three places)."""
        metrics = self.manifest.get("metrics") or {}
        details = metrics.get("details") or {}
        return ((metrics.get("precision") or {}).get("guard") or details.get("guard")
                or (details.get("int8") or {}).get("guard"))

    @classmethod
    def open(cls, path: Path) -> "Artifact":
        if not path.exists():
            raise InputFileError(f"artifact '{path}' does not exist")
        if path.is_file():
            if path.suffix.lower() != ".onnx":
                raise InputFileError(f"'{path.name}' is neither an artifact folder nor an .onnx file")
            return cls(path, {"backend": "onnxruntime", "model_file": path.name})
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise InputFileError(f"'{path}' is not an edgekiln artifact (no {MANIFEST_NAME})",
                                 hint="Make one with 'edgekiln compile'.")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputFileError(f"{manifest_path} is not valid JSON ({exc})") from exc
        except RecursionError:
            raise InputFileError(f"{manifest_path} nests too deep to be a manifest (a corrupt or hostile file)") \
                from None
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise InputFileError(f"{manifest_path} is not an {MANIFEST_FORMAT} manifest")
        artifact = cls(path, manifest)
        artifact._check_model_file(manifest_path)
        return artifact

    def _check_model_file(self, manifest_path: Path) -> None:
        """The manifest's model file is inside the artifact folder and is the file that was written there.

        A manifest is data: its ``model_file`` could name ``/etc/passwd``, or another model elsewhere on the
        host that would then run silently under this artifact's name.
        """
        from toolchain.errors import printable
        from toolchain.fileio import sha256_path

        name = self.manifest.get("model_file")
        if not isinstance(name, str) or not name or "\x00" in name:
            raise InputFileError(f"{manifest_path} names no valid model_file")
        folder = self.path.resolve()
        target = (folder / name).resolve()
        if Path(name).is_absolute() or folder not in target.parents:
            raise InputFileError(f"{manifest_path} names a model file outside the artifact folder "
                                 f"('{printable(name)}'); refusing to open it")
        if not target.is_file():
            raise InputFileError(f"artifact '{self.path}' is missing its model file '{printable(name)}'")
        recorded = self.manifest.get("model_sha256")
        if recorded is not None and sha256_path(target) != recorded:
            raise InputFileError(f"the model file '{printable(name)}' of artifact '{self.path}' is not the one its "
                                 "manifest recorded (sha256 differs): it was changed or replaced after the build",
                                 hint="Rebuild the artifact, or restore its model file.")


def write_manifest(folder: Path, manifest: dict[str, Any]) -> Path:
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps({"format": MANIFEST_FORMAT, **manifest}, indent=2, sort_keys=True, default=str) + "\n")
    return path

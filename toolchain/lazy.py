"""The one place heavy optional SDKs are imported.

torch, tensorflow, onnx2tf and tensorrt take seconds to import and are optional
extras, so no module imports them at module level; code calls ``require`` inside
the function that needs them. A missing SDK becomes a ``MissingDependencyError``
naming the extra to install. Nothing is ever installed automatically.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from toolchain.errors import MissingDependencyError

# module name -> the edgekiln extra that provides it
EXTRA_FOR_MODULE: dict[str, str] = {
    "torch": "torch",
    "onnxscript": "torch",
    "tensorflow": "tf",
    "tf2onnx": "tf",
    "keras": "tf",
    "onnx2tf": "tflite",
    "ai_edge_litert": "tflite",
    "tensorrt": "tensorrt",
    "pycuda": "tensorrt",
}


def install_hint(module: str) -> str:
    extra = EXTRA_FOR_MODULE.get(module.split(".")[0])
    if extra is None:
        return f"pip install {module.split('.')[0]}"
    return f"pip install 'edgekiln[{extra}]'"


def is_installed(module: str) -> bool:
    """True if ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# SDKs whose native code logs to stderr while importing (see quiet.native_stderr_captured).
_NATIVE_NOISY = {"tensorflow", "tf2onnx", "keras", "onnx2tf", "ai_edge_litert"}


def require(module: str, purpose: str) -> ModuleType:
    """Import ``module`` or raise an error that says what to install and why it is needed."""
    try:
        if module.split(".")[0] in _NATIVE_NOISY and module not in sys.modules:
            from toolchain.quiet import native_stderr_captured

            with native_stderr_captured():
                return importlib.import_module(module)
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = getattr(exc, "name", None) or top
        raise MissingDependencyError(
            f"{purpose} needs '{top}', which is not installed (import of '{missing}' failed)",
            hint=f"Install it with: {install_hint(top)}",
        ) from exc

"""ONNX Runtime runner: the reference runtime (``toolchain.runtime``), which this backend serves as-is."""

from toolchain.runtime import OnnxRuntimeRunner, session_options

__all__ = ["OnnxRuntimeRunner", "session_options"]

"""ONNX Runtime: the baseline backend every other one is compared against."""

from backends.onnxruntime.builder import OnnxRuntimeBackend

__all__ = ["OnnxRuntimeBackend"]

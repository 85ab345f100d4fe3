"""TFLite / LiteRT backend: ONNX lowered with onnx2tf and TensorFlow's TFLiteConverter, run with LiteRT."""

from backends.tflite.builder import TFLiteBackend

__all__ = ["TFLiteBackend"]

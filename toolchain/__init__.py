"""edgekiln: convert, optimize, compile and verify neural networks for small devices.

The package is deliberately import-light: nothing heavy (torch, tensorflow,
onnx2tf, tensorrt) is imported here or at CLI start-up. See ``toolchain.lazy``.
"""

__version__ = "0.1.0"

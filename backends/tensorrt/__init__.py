"""TensorRT: engines for Jetson Nano/Xavier/Orin and CUDA GPUs, plus a device bundle that builds them there.

Nothing here imports tensorrt at module level; see ``backend.py`` for what runs where.
"""

from backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]

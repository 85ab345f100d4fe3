"""Benchmark harness for edgekiln's ONNX Runtime precisions (FP32, INT8, dynamic INT8, FP16).

Run ``python -m bench.run`` to regenerate ``BENCHMARKS.md`` and ``bench/results.json``.
Not part of the installed package; nothing here runs at import time.
"""

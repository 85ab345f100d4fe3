"""Compression of PyTorch models before export: structured pruning, distillation, QAT.

Every step is measured the same way (``measure``): parameters, MACs, the exported
ONNX size, ONNX Runtime latency on this CPU, and accuracy or agreement with the
original model on held-out images.
"""

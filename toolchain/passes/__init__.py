"""Graph passes on ONNX models. Each pass has a typed config and ``run(model, config) -> (model, PassReport)``."""

"""ONNX Runtime sessions made from in-memory models: large weights travel beside the serialized model
(ORT's ``add_external_initializers``), and what the session computes must not change."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from helpers import make_onnx_model
from toolchain.passes.quantize import QuantizeConfig, compute_ranges, quantize_static
from toolchain.runtime import IN_MEMORY_WEIGHT_BYTES, OnnxRuntimeRunner, _weights_apart


def _plain(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


def _feed(seed: int = 0) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 1, 8, 8)).astype(np.float32)}


def test_float_model_outputs_are_bit_identical_and_the_caller_model_is_untouched():
    model = make_onnx_model()
    before = model.SerializeToString()
    runner = OnnxRuntimeRunner.from_model(model)
    for seed in range(3):
        assert np.array_equal(runner.run(_feed(seed))["y"], _plain(model, _feed(seed))[0])
    assert model.SerializeToString() == before


def test_int8_qdq_model_outputs_are_bit_identical():
    model = make_onnx_model()
    config = QuantizeConfig.for_target("x86")
    quantized = quantize_static(model, compute_ranges(model, [_feed(s) for s in range(8)], config), config)
    moved = _weights_apart(quantized)
    assert moved is not None and any(a.dtype == np.int8 for a in moved[1].values())  # the int8 weights moved
    runner = OnnxRuntimeRunner.from_model(quantized)
    for seed in range(3):
        assert np.array_equal(runner.run(_feed(seed))["y"], _plain(quantized, _feed(seed))[0])


def test_int64_fp16_and_small_initializers_keep_their_values():
    shape = np.arange(512, dtype=np.int64)  # 4 KiB of int64: moved, and must stay int64
    half = np.linspace(-1, 1, 1024).astype(np.float16)  # 2 KiB of fp16: moved
    small = np.array([0.5], dtype=np.float32)  # a few bytes: stays inside the model
    nodes = [helper.make_node("Cast", ["h"], ["hf"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Mul", ["hf", "s"], ["m"]),
             helper.make_node("Cast", ["i"], ["if_"], to=onnx.TensorProto.FLOAT),
             helper.make_node("Add", ["m", "if_"], ["y0"]),
             helper.make_node("Add", ["y0", "x"], ["y"])]
    graph = helper.make_graph(nodes, "types", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1024])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1024])],
                              [numpy_helper.from_array(half, "h"), numpy_helper.from_array(small, "s"),
                               numpy_helper.from_array(np.concatenate([shape, shape]), "i")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    stripped, weights = _weights_apart(model)
    assert set(weights) == {"h", "i"} and weights["i"].dtype == np.int64 and weights["h"].dtype == np.float16
    assert all(len(t.raw_data) < IN_MEMORY_WEIGHT_BYTES for t in stripped.graph.initializer)
    feed = {"x": np.random.default_rng(1).standard_normal(1024).astype(np.float32)}
    assert np.array_equal(OnnxRuntimeRunner.from_model(model).run(feed)["y"], _plain(model, feed)[0])


def test_a_model_with_only_small_weights_is_passed_as_it_is():
    nodes = [helper.make_node("Add", ["x", "b"], ["y"])]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4])],
                              [numpy_helper.from_array(np.ones(4, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert _weights_apart(model) is None
    feed = {"x": np.arange(4, dtype=np.float32)}
    assert np.array_equal(OnnxRuntimeRunner.from_model(model).run(feed)["y"], feed["x"] + 1)

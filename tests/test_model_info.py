"""toolchain.model_info: MAC estimates, parameter counts and the inspect report on real ONNX models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from toolchain.model_info import (
    ModelSummary,
    OpCost,
    conv_output_spatial,
    format_summary,
    human_bytes,
    human_count,
    summarize,
)
from toolchain.onnx_io import load_onnx

RNG = np.random.default_rng(0)


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(dtype), name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           initializers: list[onnx.TensorProto] = (), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgekiln-test",
                              producer_version="1.0")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _f(name: str, shape: list[int | str | None]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _single_conv(x_shape, w_shape, y_shape, **attrs) -> onnx.ModelProto:
    return _model([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)],
                  [_f("x", list(x_shape))], [_f("y", list(y_shape))], [_init("w", w_shape)])


# --------------------------------------------------------------------------- MACs


def test_grouped_strided_padded_conv_macs():
    # X 1x8x15x15, W 16x4x3x3, groups=2, stride 2, pad 1: out = floor((15+2-3)/2)+1 = 8
    # MACs = N*Cout*Hout*Wout*(Cin/groups)*kH*kW = 1*16*8*8*4*3*3
    model = _single_conv((1, 8, 15, 15), (16, 4, 3, 3), (1, 16, 8, 8), group=2, strides=[2, 2], pads=[1, 1, 1, 1])
    (y,) = _run(model, {"x": RNG.standard_normal((1, 8, 15, 15)).astype(np.float32)})
    assert y.shape == (1, 16, 8, 8)  # ONNX Runtime agrees with the output-size formula
    summary = summarize(model)
    assert summary.macs == 1 * 16 * 8 * 8 * 4 * 3 * 3 == 36_864
    assert summary.macs_by_op == [OpCost("Conv", 1, 36_864)]
    assert summary.unknown_shape_ops == 0


def test_depthwise_conv_macs():
    # 32 channels, one 3x3 filter each, same padding: 32*28*28*1*3*3
    model = _single_conv((1, 32, 28, 28), (32, 1, 3, 3), (1, 32, 28, 28), group=32, pads=[1, 1, 1, 1])
    assert summarize(model).macs == 32 * 28 * 28 * 9 == 225_792


def test_conv_3d_macs():
    # Any number of spatial dims: X 2x3x4x8x8, W 5x3x2x3x3, no pad -> out 3x6x6
    model = _single_conv((2, 3, 4, 8, 8), (5, 3, 2, 3, 3), (2, 5, 3, 6, 6))
    assert summarize(model).macs == 2 * 5 * (3 * 6 * 6) * 3 * (2 * 3 * 3) == 58_320


def test_conv_output_formula_fallback():
    # Used when inference gives no output shape.
    assert conv_output_spatial((15, 15), (3, 3), strides=[2, 2], pads=[1, 1, 1, 1]) == (8, 8)
    assert conv_output_spatial((15, 20), (3, 5), strides=[2, 3], pads=[0, 1, 2, 0], dilations=[1, 2]) == (8, 5)
    assert conv_output_spatial((15,), (3,), strides=[2], auto_pad="SAME_UPPER") == (8,)
    assert conv_output_spatial((15,), (3,), strides=[2], auto_pad="VALID") == (7,)


def test_gemm_trans_b_macs():
    # A 4x64, B given as 10x64 with transB=1 -> M=4, N=10, K=64
    model = _model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transB=1)],
                   [_f("a", [4, 64])], [_f("y", [4, 10])], [_init("b", (10, 64)), _init("c", (10,))])
    (y,) = _run(model, {"a": RNG.standard_normal((4, 64)).astype(np.float32)})
    assert y.shape == (4, 10)
    assert summarize(model).macs == 4 * 10 * 64 == 2_560


def test_gemm_trans_a_macs():
    model = _model([helper.make_node("Gemm", ["a", "b"], ["y"], transA=1)],
                   [_f("a", [64, 4])], [_f("y", [4, 10])], [_init("b", (64, 10))])
    assert summarize(model).macs == 2_560


def test_batched_broadcast_matmul_macs():
    # A 2x1x5x6 @ B 3x6x7: batch dims broadcast to 2x3, each a 5x6 @ 6x7 product
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                   [_f("a", [2, 1, 5, 6]), _f("b", [3, 6, 7])], [_f("y", [2, 3, 5, 7])])
    (y,) = _run(model, {"a": np.ones((2, 1, 5, 6), np.float32), "b": np.ones((3, 6, 7), np.float32)})
    assert y.shape == (2, 3, 5, 7)
    assert summarize(model).macs == (2 * 3) * 5 * 7 * 6 == 1_260


def test_matmul_vector_operand_macs():
    # 1-D B (numpy rules): 3x4x6 @ 6 -> 3x4, i.e. 12 dot products of length 6
    model = _model([helper.make_node("MatMul", ["a", "b"], ["y"])], [_f("a", [3, 4, 6])], [_f("y", [3, 4])],
                   [_init("b", (6,))])
    assert summarize(model).macs == 3 * 4 * 6


def test_conv_transpose_macs():
    # X 1x8x5x5, W 8x4x3x3 (Cin x Cout/groups x k): N*Cin*Hin*Win*(Cout/groups)*kH*kW
    model = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
                   [_f("x", [1, 8, 5, 5])], [_f("y", [1, 4, 11, 11])], [_init("w", (8, 4, 3, 3))])
    (y,) = _run(model, {"x": RNG.standard_normal((1, 8, 5, 5)).astype(np.float32)})
    assert y.shape == (1, 4, 11, 11)
    assert summarize(model).macs == 1 * 8 * 5 * 5 * 4 * 3 * 3 == 7_200


def test_einsum_and_lstm_macs():
    einsum = _model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")],
                    [_f("a", [2, 3, 4]), _f("b", [2, 4, 5])], [_f("y", [2, 3, 5])])
    assert summarize(einsum).macs == 2 * 3 * 4 * 5

    # seq 5, batch 2, input 3, hidden 4: per step and row, W (16x3) and R (16x4) products
    lstm = _model([helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4)],
                  [_f("x", [5, 2, 3])], [_f("y", [5, 1, 2, 4])], [_init("w", (1, 16, 3)), _init("r", (1, 16, 4))])
    assert summarize(lstm).macs == 5 * 2 * (16 * 3 + 16 * 4) == 1_120


def _dynamic_cnn() -> onnx.ModelProto:
    """N x 3x32x32 -> Conv(8, 3x3, pad 1) -> Relu -> GAP -> Reshape(-1, 8) -> Gemm(10) -> Relu."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(np.array([-1, 8], np.int64))),
        helper.make_node("Reshape", ["p", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["g"], transB=1),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    inits = [_init("conv_w", (8, 3, 3, 3)), _init("conv_b", (8,)), _init("fc_w", (10, 8)), _init("fc_b", (10,))]
    return _model(nodes, [_f("x", ["N", 3, 32, 32])], [_f("y", ["N", 10])], inits)


CONV_MACS = 8 * 32 * 32 * 3 * 3 * 3  # 221_184 per image
GEMM_MACS = 8 * 10  # 80 per image


def test_dynamic_batch_scales_macs():
    model = _dynamic_cnn()
    (y,) = _run(model, {"x": RNG.standard_normal((4, 3, 32, 32)).astype(np.float32)})
    assert y.shape == (4, 10)
    before = model.SerializeToString()

    one = summarize(model)
    four = summarize(model, batch=4)
    assert one.macs == CONV_MACS + GEMM_MACS == 221_264
    assert four.macs == 4 * one.macs == 885_056
    assert four.macs_by_op == [OpCost("Conv", 1, 4 * CONV_MACS), OpCost("Gemm", 1, 4 * GEMM_MACS)]
    assert four.unknown_shape_ops == 0
    # The report keeps the model's own symbolic dims; only the estimate uses the batch.
    assert four.inputs[0].shape == ("N", 3, 32, 32)
    assert four.outputs[0].shape == ("N", 10)
    assert model.SerializeToString() == before  # the caller's model is untouched


def test_unknown_non_batch_dim_is_reported_not_guessed():
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])], [_f("x", ["N", "seq", 16])],
                   [_f("y", ["N", "seq", 8])], [_init("w", (16, 8))])
    summary = summarize(model, batch=2)
    assert summary.macs == 0
    assert summary.unknown_shape_ops == 1
    assert "1 node(s) with unknown shapes" in format_summary(summary)


# --------------------------------------------------------------------------- static facts


def test_parameters_histogram_and_metadata():
    summary = summarize(_dynamic_cnn())
    # float32: 8*3*3*3 + 8 + 10*8 + 10 = 314; int64 shape Constant: 2
    assert summary.parameter_count == 316
    assert summary.parameter_bytes == 314 * 4 + 2 * 8 == 1_272
    assert summary.weight_dtypes == {"float32": 314, "int64": 2}
    assert list(summary.op_histogram.items()) == [
        ("Relu", 2), ("Constant", 1), ("Conv", 1), ("Gemm", 1), ("GlobalAveragePool", 1), ("Reshape", 1)]
    assert summary.node_count == 7
    assert summary.opset == 17 and summary.ir_version == 8 and summary.other_opsets == {}
    assert summary.producer == "edgekiln-test 1.0"
    assert summary.has_quantized_ops is False
    assert summary.path is None and summary.file_bytes == 0


def test_quantized_model():
    # QLinearConv: uint8 X 1x2x5x5, W 3x2x3x3, no pad -> 3x3 output; MACs like Conv
    scalar = lambda name, value, dtype: numpy_helper.from_array(np.array(value, dtype), name)  # noqa: E731
    inits = [
        scalar("xs", 0.1, np.float32), scalar("xz", 128, np.uint8),
        numpy_helper.from_array(RNG.integers(0, 255, (3, 2, 3, 3)).astype(np.uint8), "w"),
        scalar("ws", 0.05, np.float32), scalar("wz", 128, np.uint8),
        scalar("ys", 0.2, np.float32), scalar("yz", 128, np.uint8),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"]),
    ]
    model = _model(nodes, [_f("x", [1, 2, 5, 5])], [_f("y", [1, 3, 3, 3])], inits)
    (y,) = _run(model, {"x": RNG.standard_normal((1, 2, 5, 5)).astype(np.float32)})
    assert y.shape == (1, 3, 3, 3)
    summary = summarize(model)
    assert summary.has_quantized_ops is True
    assert summary.macs == 3 * 3 * 3 * 2 * 3 * 3 == 486
    assert summary.weight_dtypes == {"uint8": 3 * 2 * 3 * 3 + 3, "float32": 3}


def test_custom_domain_opsets_and_ops_are_qualified():
    model = _dynamic_cnn()
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    model.graph.node.append(helper.make_node("Gelu", ["y"], ["z"], domain="com.microsoft"))
    summary = summarize(model)
    assert summary.other_opsets == {"com.microsoft": 1}
    assert summary.op_histogram["com.microsoft.Gelu"] == 1


def test_file_bytes_include_external_data(tmp_path: Path):
    big = _init("big", (256, 256))  # 256 KiB of float32, well over the external-data threshold
    model = _model([helper.make_node("MatMul", ["x", "big"], ["y"])], [_f("x", [1, 256])], [_f("y", [1, 256])], [big])
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=1024)
    data = tmp_path / "weights.bin"
    expected = path.stat().st_size + data.stat().st_size
    assert data.stat().st_size >= 256 * 256 * 4 > path.stat().st_size

    # load_onnx inlines the data and drops the references; the file is re-read for them.
    loaded = summarize(load_onnx(path), path)
    # Not loaded: the references are still in the model.
    refs = summarize(onnx.load(str(path), load_external_data=False), path)
    assert loaded.file_bytes == refs.file_bytes == expected
    assert loaded.parameter_count == refs.parameter_count == 256 * 256
    assert loaded.macs == refs.macs == 256 * 256
    assert loaded.path == str(path)


def test_file_bytes_without_external_data(tmp_path: Path):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(_dynamic_cnn(), str(path))
    assert summarize(load_onnx(path), path).file_bytes == path.stat().st_size


# --------------------------------------------------------------------------- output forms


def test_to_dict_is_json_serialisable():
    summary = summarize(_dynamic_cnn(), batch=4)
    data = json.loads(json.dumps(summary.to_dict()))
    assert data["inputs"] == [{"name": "x", "shape": ["N", 3, 32, 32], "dtype": "float32"}]
    assert data["macs"] == 885_056
    assert data["macs_by_op"][0] == {"op_type": "Conv", "count": 1, "macs": 884_736}
    assert data["parameter_count"] == 316
    assert data["batch"] == 4
    assert set(data) >= {f for f in ModelSummary.__dataclass_fields__}


def test_format_summary_contains_key_numbers(tmp_path: Path):
    path = tmp_path / "cnn.onnx"
    onnx.save_model(_dynamic_cnn(), str(path))
    summary = summarize(load_onnx(path), path)
    text = format_summary(summary)
    assert str(path) in text
    assert human_bytes(summary.file_bytes) in text
    assert "x  Nx3x32x32  float32" in text
    assert "y  Nx10" in text
    assert "Opset: 17" in text
    assert "edgekiln-test 1.0" in text
    assert "Parameters:  316 (1.3 KB; float32 314, int64 2)" in text
    assert "MACs:        221.3 K (batch 1)" in text
    assert "Nodes:       7" in text
    lines = text.splitlines()
    relu = next(line for line in lines if line.strip().startswith("Relu"))
    conv = next(line for line in lines if line.strip().startswith("Conv"))
    assert relu.split() == ["Relu", "2"]
    assert conv.split() == ["Conv", "1", "221.2", "K", "MACs"]
    assert relu.index("2") == conv.index("1")  # counts in one aligned column


def test_human_units():
    assert human_count(512) == "512"
    assert human_count(101_800) == "101.8 K"
    assert human_count(2_310_000) == "2.31 M"
    assert human_count(999_999) == "1 M"
    assert human_count(3_500_000_000) == "3.5 G"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_272) == "1.3 KB"
    assert human_bytes(5_200_000) == "5.2 MB"


def test_batch_must_be_positive():
    with pytest.raises(ValueError):
        summarize(_dynamic_cnn(), batch=0)


def test_conv_cost_from_attributes_without_shape_inference(monkeypatch: pytest.MonkeyPatch):
    # Shape inference is skipped for some models (>2 GiB, or it fails): the Conv
    # output size then comes from the ONNX formula, and ops needing inferred
    # shapes are counted as unknown rather than guessed.
    import toolchain.model_info as model_info

    monkeypatch.setattr(model_info, "infer_shapes", lambda model: model)
    model = _model([helper.make_node("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1])],
                   [_f("x", [1, 8, 15, 15])], [_f("y", ["n", "c", "h", "w"])], [_init("w", (16, 4, 3, 3))])
    assert summarize(model).macs == 36_864
    cnn = summarize(_dynamic_cnn(), batch=2)
    assert cnn.macs == 2 * CONV_MACS  # Conv input shape is declared; Gemm's input is not
    assert cnn.unknown_shape_ops == 1


def test_subgraph_nodes_are_counted():
    branch = lambda name, w: helper.make_graph(  # noqa: E731
        [helper.make_node("MatMul", ["x", w], [f"{name}_y"])], name, [], [_f(f"{name}_y", [2, 4])])
    model = _model(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "w1"), else_branch=branch("else", "w2"))],
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, []), _f("x", [2, 3])], [_f("y", [2, 4])],
        [_init("w1", (3, 4)), _init("w2", (3, 4))])
    summary = summarize(model)
    assert summary.op_histogram == {"MatMul": 2, "If": 1}
    assert summary.macs == 2 * (2 * 4 * 3)  # each branch counted once

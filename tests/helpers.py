"""Plain helpers shared by tests (importable as ``helpers``; conftest holds the fixtures)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper


def make_onnx_model(batch: int | str = 1) -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm on a 1x1x8x8 input, built with onnx.helper."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "b": rng.standard_normal(4).astype(np.float32),
        "fc_w": rng.standard_normal((10, 256)).astype(np.float32) * 0.1,
        "fc_b": rng.standard_normal(10).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekiln-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def with_weight(model: onnx.ModelProto, name: str, value: float | None = None,
                scale: float = 1.0) -> onnx.ModelProto:
    """``model`` with weight ``name`` scaled by ``scale`` and, given ``value`` (NaN, Inf), its 4th value set to it."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            array = numpy_helper.to_array(tensor).copy() * np.float32(scale)
            if value is not None:
                array.reshape(-1)[3] = value
            tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), name))
    return model


def write_images(folder: Path, count: int = 6, size: int = 8, mode: str = "L") -> Path:
    """Real PNG files with seeded random pixels."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    channels = 1 if mode == "L" else 3
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
        Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(folder / f"img_{i}.png")
    return folder


def files_in(folder: Path) -> list[str]:
    """Every file name under ``folder``, hidden ones included, to prove nothing was left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def make_outlier_cnn(scale: float = 1000.0) -> onnx.ModelProto:
    """A small CNN whose first activation has one outlier channel, yet computes the same function.

    Conv1's output channel 0 is multiplied by ``scale`` and Conv2's weights for that input
    channel divided by it: FP32 outputs are unchanged (up to rounding), but a per-tensor
    INT8 range for that activation now spans the outlier and crushes the other channels
    to a few levels. This is how outlier channels break real models.
    """
    rng = np.random.default_rng(3)
    w1 = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b1 = rng.uniform(0.0, 0.5, 8).astype(np.float32)
    w2 = (rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32)
    w1[0] *= scale
    b1[0] *= scale
    w2[:, 0] /= scale
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": np.zeros(8, np.float32),
               "w3": (rng.standard_normal((8, 8, 3, 3)) * 0.3).astype(np.float32), "b3": np.zeros(8, np.float32),
               "fc_w": (rng.standard_normal((10, 8 * 8 * 8)) * 0.1).astype(np.float32),
               "fc_b": np.zeros(10, np.float32)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("Flatten", ["r3"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "outlier",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the real entry point (with its error handling) and capture what the user sees."""
    from toolchain.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


def make_single_layer_model(weight: np.ndarray, op_type: str = "MatMul") -> onnx.ModelProto:
    """x (1 x n) -> one MatMul or Gemm (transB) with ``weight`` -> y: the smallest model with one weight layer."""
    n_in = weight.shape[1] if op_type == "Gemm" else weight.shape[0]
    n_out = weight.shape[0] if op_type == "Gemm" else weight.shape[1]
    attributes = {"transB": 1} if op_type == "Gemm" else {}
    graph = helper.make_graph([helper.make_node(op_type, ["x", "w"], ["y"], name="fc", **attributes)], "single",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, n_in])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, n_out])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model

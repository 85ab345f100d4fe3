"""Oversized inputs are refused before anything is allocated (issue #17, defect 4)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from helpers import assert_one_line_error, run_main
from toolchain.errors import UsageError
from toolchain.feeds import MAX_INPUT_BYTES, random_feed
from toolchain.onnx_io import TensorInfo


def test_a_huge_shape_is_refused_naming_the_input_and_its_size():
    with pytest.raises(UsageError) as refused:
        random_feed([TensorInfo("image", (1, 3, 100000, 100000), np.dtype("float32"))])
    assert "input 'image' of shape 1x3x100000x100000 (float32) would take 111.8 GiB" in refused.value.one_line()


def test_dims_whose_product_overflows_int64_are_still_refused():
    with pytest.raises(UsageError):
        random_feed([TensorInfo("x", (2**40, 2**40), np.dtype("float32"))])


def test_an_input_just_under_the_limit_is_made_in_its_own_dtype():
    side = int((MAX_INPUT_BYTES // 2) ** 0.5) // 2  # a float16 tensor well under the limit, over 64 MiB as float64
    feed = random_feed([TensorInfo("x", (1, 1, side, side), np.dtype("float16"))])
    assert feed["x"].dtype == np.float16 and np.isfinite(feed["x"]).all()


def test_small_inputs_keep_their_recorded_values():
    # Earlier benchmark and test records were made with these exact draws.
    feed = random_feed([TensorInfo("x", (1, 4), np.dtype("float32"))], seed=0)
    expected = np.random.default_rng(0).standard_normal((1, 4)).astype(np.float32)
    np.testing.assert_array_equal(feed["x"], expected)


def test_convert_with_a_declared_huge_input_is_one_line(tmp_path, capsys):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, "h", "w"])])
    model = tmp_path / "dynamic.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), str(model))
    out = tmp_path / "out.onnx"
    code, _, err = run_main(["convert", str(model), "-o", str(out), "--input", "x:1x3x100000x100000"], capsys)
    assert_one_line_error(code, err, "input 'x' of shape 1x3x100000x100000", "GiB")
    assert code == 2 and not out.exists()

"""Each onnx2tf failure met on a real model, reproduced by a minimal graph, and the exact rewrite that fixes it.

Every case runs the real onnx2tf twice: on the graph as given (it must fail, fast, with one line naming the
user's node and TensorFlow's reason) and through edgekiln's TFLite build (it must convert and match ONNX
Runtime). Real models behind them: PP-OCR's classifier (``Softmax@0``) and YOLOv8n's anchor grid (a
Constant node feeding the box decoder).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends.onnxruntime.runner import OnnxRuntimeRunner
from backends.tflite import TFLiteBackend
from backends.tflite.onnx2tf_run import TIMEOUT_VARIABLE, convert_to_saved_model, failure_summary, last_step
from backends.tflite.prepare import constants_as_initializers, prepare_for_onnx2tf, tf_safe_name, tf_safe_node_names
from toolchain import api
from toolchain.errors import ConversionError

_AVAILABLE, _WHY = TFLiteBackend().is_available()
needs_onnx2tf = pytest.mark.skipif(not _AVAILABLE, reason=f"tflite backend not usable here: {_WHY}")
FAILS_WITHIN_S = 60
"""onnx2tf's automatic replacement search took 14 minutes to fail on YOLOv8n; a failure must come in seconds."""


def _model(nodes, inputs, outputs, initializers=()) -> onnx.ModelProto:
    model = helper.make_model(helper.make_graph(nodes, "case", inputs, outputs, list(initializers)),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def paddle_named_softmax() -> onnx.ModelProto:
    """PP-OCR's classifier head: Paddle2ONNX names nodes ``Op@N``, which TensorFlow refuses as op names."""
    weights = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 2)).astype(np.float32), "fc")
    return _model([helper.make_node("MatMul", ["x", "fc"], ["logits"], name="MatMul@0"),
                   helper.make_node("Softmax", ["logits"], ["scores"], axis=1, name="Softmax@0")],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                  [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 2])], [weights])


def yolo_style_box_decoder(anchors: int = 64) -> onnx.ModelProto:
    """YOLOv8's head in small: conv features reshaped to [1, C, N], boxes decoded against an anchor grid that is a
    Constant node, then joined with the class scores."""
    rng = np.random.default_rng(0)

    def init(name, array):
        return numpy_helper.from_array(np.asarray(array), name)

    grid = numpy_helper.from_array((rng.random((1, 2, anchors)) * 8).astype(np.float32), "grid")
    return _model(
        [helper.make_node("Constant", [], ["anchors"], value=grid, name="/model.22/Constant"),
         helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="/model.22/cv/Conv"),
         helper.make_node("Reshape", ["c", "shape"], ["r"], name="/model.22/Reshape"),
         helper.make_node("Split", ["r", "split"], ["box", "cls"], axis=1, name="/model.22/Split"),
         helper.make_node("Sigmoid", ["cls"], ["score"], name="/model.22/Sigmoid"),
         helper.make_node("Slice", ["box", "s0", "s2", "axis"], ["lt"], name="/model.22/Slice"),
         helper.make_node("Slice", ["box", "s2", "s4", "axis"], ["rb"], name="/model.22/Slice_1"),
         helper.make_node("Sub", ["anchors", "lt"], ["x1y1"], name="/model.22/Sub"),
         helper.make_node("Add", ["anchors", "rb"], ["x2y2"], name="/model.22/Add"),
         helper.make_node("Concat", ["x1y1", "x2y2"], ["xyxy"], axis=1, name="/model.22/Concat_24"),
         helper.make_node("Mul", ["xyxy", "stride"], ["boxes"], name="/model.22/Mul_5"),
         helper.make_node("Concat", ["boxes", "score"], ["output0"], axis=1, name="/model.22/Concat_25")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 6, anchors])],
        [init("w", (rng.standard_normal((6, 3, 3, 3)) * 0.3).astype(np.float32)),
         init("shape", np.array([1, 6, anchors], np.int64)), init("split", np.array([4, 2], np.int64)),
         init("s0", np.array([0], np.int64)), init("s2", np.array([2], np.int64)), init("s4", np.array([4], np.int64)),
         init("axis", np.array([1], np.int64)), init("stride", np.full((1, anchors), 8.0, np.float32))])


# ---- the rewrites themselves: exact, no onnx2tf needed ------------------------------------------------------

def test_names_tensorflow_refuses_become_names_it_takes_and_stay_unique():
    assert tf_safe_name("Softmax@0") == "Softmax_0"
    assert tf_safe_name("/model.22/Concat_25") == "n/model.22/Concat_25"  # a name must not start with '/'
    assert tf_safe_name("conv1") == "conv1"
    clash = _model([helper.make_node("Relu", ["x"], ["a"], name="Relu@0"),
                    helper.make_node("Relu", ["a"], ["b"], name="Relu_0")],
                   [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4])])
    renamed, originals = tf_safe_node_names(clash)
    names = [node.name for node in renamed.graph.node]
    assert len(set(names)) == 2 and "Relu_0" in names and originals == {names[0]: "Relu@0"}


def test_constant_nodes_become_the_same_initializers():
    model = yolo_style_box_decoder()
    folded, count = constants_as_initializers(model)
    assert count == 1 and not any(node.op_type == "Constant" for node in folded.graph.node)
    feed = {"x": np.random.default_rng(1).random((1, 3, 8, 8), dtype=np.float32)}
    np.testing.assert_array_equal(OnnxRuntimeRunner.from_model(model).run(feed)["output0"],
                                  OnnxRuntimeRunner.from_model(folded).run(feed)["output0"])


def test_preparation_says_what_it_changed_and_keeps_the_users_node_names():
    prepared = prepare_for_onnx2tf(yolo_style_box_decoder())
    assert prepared.notes == ["12 node name(s) TensorFlow refuses renamed (names only: exact)",
                              "1 Constant node(s) made initializers (the same tensors)"]
    assert prepared.original_names["n/model.22/Concat_25"] == "/model.22/Concat_25"


def test_a_debug_log_names_the_op_that_failed_and_the_one_running_when_stopped():
    log = ("INFO: 1 / 2\nINFO: onnx_op_type: Conv onnx_op_name: a_0\nINFO: 2 / 2\n"
           "INFO: onnx_op_type: Concat onnx_op_name: n/b\nValueError: Dimension 0 in both shapes must be equal, "
           "but are 4 and 64. Shapes are [4] and [64].\nERROR: onnx_op_name: n/b\n")
    assert failure_summary(log, 1, {"n/b": "/b"}) == (
        "op Concat (node '/b') failed to convert: Dimension 0 in both shapes must be equal, but are 4 and 64")
    assert last_step(log, {"n/b": "/b"}) == "converting op 2 of 2: Concat node '/b'"
    assert last_step("") == "starting up"


# ---- real onnx2tf: the failure as given, the fix through the build --------------------------------------------

def _raw_failure(model: onnx.ModelProto, tmp_path: Path) -> tuple[str, float]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with pytest.raises(ConversionError) as error:
        convert_to_saved_model(model, tmp_path, tmp_path / "onnx2tf.log", cache=None)
    return error.value.message, time.monotonic() - started


def _tflite_matches_onnx_runtime(model: onnx.ModelProto, tmp_path: Path, input_shape: tuple[int, ...]) -> None:
    onnx.save(model, str(tmp_path / "case.onnx"))
    result = api.compile(tmp_path / "case.onnx", tmp_path / "art", backend="tflite", precision="fp32", no_cache=True)
    (report,) = result.parity
    assert report.passed, report
    runner = TFLiteBackend().load(result.artifact.model_path, result.artifact.manifest["runtime_options"])
    feed = {"x": np.random.default_rng(2).random(input_shape, dtype=np.float32)}
    expected = OnnxRuntimeRunner.from_model(model).run(feed)
    got = runner.run(feed)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-5)


@needs_onnx2tf
def test_paddle_node_names_failed_in_onnx2tf_and_convert_once_renamed(tmp_path):
    model = paddle_named_softmax()
    message, seconds = _raw_failure(model, tmp_path / "raw")
    assert "Softmax@0" in message and "not a valid scope name" in message and "\n" not in message
    assert seconds < FAILS_WITHIN_S
    _tflite_matches_onnx_runtime(model, tmp_path, (1, 8))


@needs_onnx2tf
def test_a_constant_anchor_grid_broke_yolos_concat_and_converts_as_an_initializer(tmp_path):
    model = yolo_style_box_decoder()
    message, seconds = _raw_failure(prepare_for_onnx2tf_names_only(model), tmp_path / "raw")
    assert "Concat" in message and "Dimension 0 in both shapes must be equal" in message, message
    assert seconds < FAILS_WITHIN_S
    _tflite_matches_onnx_runtime(model, tmp_path, (1, 3, 8, 8))


def prepare_for_onnx2tf_names_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with only its names fixed, so that the Constant node is what onnx2tf trips on."""
    return tf_safe_node_names(model)[0]


@needs_onnx2tf
def test_a_conversion_over_its_budget_stops_with_one_line_saying_how_to_raise_it(tmp_path, monkeypatch):
    monkeypatch.setenv(TIMEOUT_VARIABLE, "1")
    message, seconds = _raw_failure(paddle_named_softmax(), tmp_path)
    assert "did not finish within 1 s" in message and "\n" not in message
    assert seconds < FAILS_WITHIN_S
    with pytest.raises(ConversionError) as error:
        convert_to_saved_model(paddle_named_softmax(), tmp_path, tmp_path / "again.log", cache=None)
    assert f"{TIMEOUT_VARIABLE}=SECONDS" in error.value.hint

"""The TFLite backend's pure parts: layout mapping, arena planning, C bundle text, log reading, plan checks.

No TensorFlow or onnx2tf needed: these run everywhere, in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pytest

from backends.base import CompileOptions
from backends.tflite.builder import BuildPlan
from backends.tflite.flatbuffer import TFLiteGraph, TFLiteOperator, TFLiteTensor
from backends.tflite.io_binding import (Binding, IOBindings, bind_inputs, input_perm, output_candidates,
                                        resolve_outputs)
from backends.tflite.mcu import (ArenaEstimate, MicroBudget, check_budgets, c_array, micro_ops, model_data_files,
                                 plan_activations)
from backends.tflite.onnx2tf_run import failure_summary
from toolchain.errors import ConversionError, UsageError, VerificationError
from toolchain.onnx_io import TensorInfo as OnnxTensor
from toolchain.precision import QuantOptions


def test_inputs_follow_onnx2tf_channel_last_rule_even_when_the_shape_is_symmetric():
    assert input_perm((1, 3, 224, 224), (1, 224, 224, 3)) == (0, 2, 3, 1)
    assert input_perm((1, 8, 8, 8), (1, 8, 8, 8)) == (0, 2, 3, 1)
    assert input_perm(("N", 16), (-1, 16)) is None
    assert input_perm((1, 4, 10), (1, 10, 4)) == (0, 2, 1)
    with pytest.raises(ConversionError):
        input_perm((1, 3, 8, 8), (1, 9, 9, 3))


def test_inputs_are_matched_by_name_then_sanitized_name():
    onnx_inputs = [OnnxTensor("images:0", (1, 3, 4, 4), np.dtype("float32"))]
    (binding,) = bind_inputs(onnx_inputs, {"images_0": (1, 4, 4, 3)})
    assert binding.key == "images_0" and binding.perm == (0, 2, 3, 1)


def test_ambiguous_outputs_are_settled_by_measured_error():
    outputs = [OnnxTensor("a", (1, 4, 4, 4), np.dtype("float32")), OnnxTensor("b", (1, 4, 4, 4), np.dtype("float32"))]
    candidates = output_candidates(outputs, {"output_0": (1, 4, 4, 4), "output_1": (1, 4, 4, 4)})
    assert len(candidates[0]) == 4  # two keys x (identity, NHWC->NCHW)
    truth = {("a", "output_1", (0, 3, 1, 2)), ("b", "output_0", None)}
    chosen = resolve_outputs(candidates, lambda b: 0.0 if (b.name, b.key, b.perm) in truth else 1.0)
    assert {(b.name, b.key, b.perm) for b in chosen} == truth


def test_unambiguous_outputs_are_taken_without_measuring():
    outputs = [OnnxTensor("y", (1, 10), np.dtype("float32"))]
    candidates = output_candidates(outputs, {"output_0": (1, 10)})
    assert resolve_outputs(candidates, lambda b: pytest.fail("measured")) == (candidates[0][0],)


def test_bindings_round_trip_through_the_manifest():
    bindings = IOBindings((Binding("x", "x", ("N", 1, 8, 8), "float32", (0, 2, 3, 1)),),
                          (Binding("y", "output_0", ("N", 10), "float32"),))
    assert IOBindings.from_dict(bindings.to_dict()) == bindings


def _tensor(index: int, shape: tuple[int, ...], constant: int = 0, dtype: str = "int8") -> TFLiteTensor:
    return TFLiteTensor(index, f"t{index}", shape, shape, dtype, constant)


def _chain_graph() -> TFLiteGraph:
    """input(64 B) -> op0 -> t1(256 B) -> op1 -> t2(256 B) -> op2 -> t3(16 B); t4 is a constant."""
    tensors = [_tensor(0, (1, 8, 8, 1)), _tensor(1, (1, 8, 8, 4)), _tensor(2, (1, 256)), _tensor(3, (1, 16)),
               _tensor(4, (4, 3, 3, 1), constant=36)]
    ops = [TFLiteOperator(0, "CONV_2D", (0, 4), (1,)), TFLiteOperator(1, "RESHAPE", (1,), (2,)),
           TFLiteOperator(2, "FULLY_CONNECTED", (2,), (3,))]
    return TFLiteGraph(1000, 3, "", tensors, ops, [0], [3], 1)


def test_arena_planning_reuses_memory_of_dead_tensors():
    # Peak: t1 and t2 together (512 B); the input's 64 B are reused by the 16 B output.
    assert plan_activations(_chain_graph()) == 512


def test_ops_tflite_micro_lacks_are_reported():
    graph = _chain_graph()
    graph.operators.append(TFLiteOperator(3, "CUSTOM:FlexErf", (3,), (3,)))
    ops = micro_ops(graph)
    assert [m for _, m in ops.registrations] == ["AddConv2D", "AddReshape", "AddFullyConnected"]
    assert ops.unsupported == ["CUSTOM:FlexErf"]


def test_budgets_report_measured_numbers():
    arena = ArenaEstimate(activations=40_000, persistent=2_000, total=46_208)
    check_budgets(10_000, arena, MicroBudget(flash_kb=10, ram_kb=46))
    with pytest.raises(VerificationError, match=r"9.8 KiB of flash > --flash-kb 9.*45.1 KiB of RAM"):
        check_budgets(10_000, arena, MicroBudget(flash_kb=9, ram_kb=45))


def test_model_array_is_aligned_and_byte_exact():
    files = model_data_files(bytes(range(20)), "m.onnx")
    assert "alignas(16) const unsigned char g_model_data[]" in files["model_data.cc"]
    assert "g_model_data_len = 20;" in files["model_data.cc"]
    assert c_array(b"\x00\xff\x10", per_line=2) == "0x00, 0xff,\n    0x10"


def test_onnx2tf_failures_are_summarised_in_one_line():
    log = "INFO: x\nERROR: DFT OP is not yet implemented.\nError occurred at ONNX operation: DFT_0\nmore\n"
    assert failure_summary(log, 1) == "onnx2tf has no converter for op DFT (node 'DFT_0')"
    assert failure_summary("ERROR: onnx_op_type: Foo onnx_op_name: bar\n", 1) == "op Foo (node 'bar') failed to convert"
    assert "exited with code 3" in failure_summary("", 3)


@pytest.mark.parametrize("options, fragment", [
    (CompileOptions(precision="fp16", target="mcu"), "needs --precision int8"),
    (CompileOptions(precision="fp32", extra={"ram_kb": 4}), "--ram-kb applies to --target mcu"),
    (CompileOptions(precision="fp32", extra={"flash_kb": -1}), "positive number"),
    (CompileOptions(precision="fp32", extra={"io_dtype": "int8"}), "need --precision int8"),
    (CompileOptions(precision="int8", quant=QuantOptions()), "needs calibration samples"),
])
def test_plan_refuses_impossible_builds(options, fragment):
    with pytest.raises(UsageError, match=fragment):
        BuildPlan.from_options(options)


def test_rpi_targets_default_to_four_threads_and_xnnpack():
    plan = BuildPlan.from_options(CompileOptions(precision="fp32", target="rpi5"))
    assert (plan.threads, plan.xnnpack, plan.io_dtype, plan.micro) == (4, True, "float32", False)
    assert BuildPlan.from_options(CompileOptions(precision="fp32", target="rpi5", threads=2)).threads == 2


def test_layers_kept_in_float_are_counted_named_and_priced():
    from backends.tflite.int8 import kept_float_note

    assert kept_float_note({"kept_float": []}, 10) is None
    note = kept_float_note({"kept_float": ["a", "b", "c", "d"], "all_int8_bytes": 5 * 2**20}, 8 * 2**20)
    assert note == ("4 layer(s) kept in float to meet the accuracy budget (model 8.0 MiB; 5.0 MiB with every "
                    "layer INT8): a; b; c; and 1 more (the manifest lists all)")

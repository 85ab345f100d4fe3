"""Names inside a model never reach the terminal raw (issue #17, defect 6).

A model's node, input and output names are data chosen by whoever made the file; ANSI and OSC
sequences among them must be printed as escapes by ``inspect``, tables and error messages.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from helpers import run_main, write_images
from toolchain.errors import UsageError, printable

CLEAR = "\x1b[2J"
RETITLE = "\x1b]0;owned\x07"


def _hostile_model(inputs: int = 1) -> onnx.ModelProto:
    names = [f"in{i}{CLEAR}" for i in range(inputs)]
    nodes = [helper.make_node("Relu", [names[0]], [f"out{RETITLE}"], name=f"relu{CLEAR}\u202e")]
    if inputs > 1:
        nodes = [helper.make_node("Add", names, [f"out{RETITLE}"], name=f"add{CLEAR}")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 8, 8])
                                           for n in names],
                              [helper.make_tensor_value_info(f"out{RETITLE}", TensorProto.FLOAT, [1, 1, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_printable_escapes_controls_and_keeps_ordinary_text():
    assert printable(f"a{CLEAR}b") == "a\\x1b[2Jb"
    assert printable("bell\x07 nul\x00 rtl\u202e") == "bell\\x07 nul\\x00 rtl\\u202e"
    assert printable("ünïcode 名前 ok: [1, 2]") == "ünïcode 名前 ok: [1, 2]"
    assert "\x1b" not in UsageError(f"node 'x{CLEAR}' is bad", hint=f"see {RETITLE}").one_line()


def test_inspect_prints_a_hostile_models_names_escaped(tmp_path, capsys):
    path = tmp_path / "hostile.onnx"
    onnx.save(_hostile_model(), str(path))
    code, out, err = run_main(["inspect", str(path)], capsys)
    assert code == 0, err
    assert "\x1b" not in out + err and "\x07" not in out + err
    assert "in0\\x1b[2J" in out  # the name is shown, escaped, not dropped


def test_an_error_naming_a_models_inputs_is_escaped(tmp_path, capsys):
    path = tmp_path / "two_inputs.onnx"
    onnx.save(_hostile_model(inputs=2), str(path))
    images = write_images(tmp_path / "images", count=40)
    code, out, err = run_main(["calibrate", str(path), "--calib", str(images), "-o", str(tmp_path / "q.onnx"),
                               "--no-guard"], capsys)
    assert code == 2
    assert "\x1b" not in err and "calibration feeds one input" in err
    assert "in0\\x1b[2J" in err
    assert not (tmp_path / "q.onnx").exists()

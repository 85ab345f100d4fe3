"""The command line as users meet it: happy paths, and one clear line for every kind of bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import files_in, make_onnx_model, write_images
from toolchain.cli import cli, main


def run_main(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the real entry point (with its error handling) and capture what the user sees."""
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


def test_happy_path_through_every_command(tiny_onnx, tmp_path):
    runner = CliRunner()
    out = tmp_path / "out"
    out.mkdir()
    steps = [
        ["convert", str(tiny_onnx), "-o", str(out / "m.onnx"), "--dynamic-batch"],
        ["optimize", str(out / "m.onnx"), "--simplify", "-o", str(out / "s.onnx")],
        ["compile", str(out / "s.onnx"), "--backend", "onnxruntime", "-o", str(out / "art")],
        ["bench", str(out / "art"), "--iterations", "5", "--warmup", "1", "--batch", "2"],
        ["inspect", str(out / "s.onnx")],
        ["backends"],
        ["targets"],
    ]
    for args in steps:
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, (args, result.output)
    assert "MACs" in runner.invoke(cli, ["inspect", str(out / "s.onnx")]).output
    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), np.float32))
    ran = runner.invoke(cli, ["run", str(out / "art"), "--input", str(tmp_path / "x.npy"), "--json"])
    assert ran.exit_code == 0 and len(json.loads(ran.output)["y"]) == 2
    bench = json.loads(runner.invoke(cli, ["bench", str(out / "art"), "--iterations", "3", "--json"]).output)
    assert bench["p50_ms"] > 0


def test_version_and_help():
    runner = CliRunner()
    assert "edgekiln, version" in runner.invoke(cli, ["--version"]).output
    for command in cli.commands:
        assert runner.invoke(cli, [command, "--help"]).exit_code == 0


@pytest.fixture
def bad_inputs(tmp_path: Path) -> dict[str, Path]:
    files = {"folder": tmp_path / "a_folder"}
    files["folder"].mkdir()
    for name, data in {"empty.onnx": b"", "corrupt.onnx": b"\x08\x07garbage" * 10, "corrupt.pt": b"PK\x03\x04junk",
                       "corrupt.h5": b"\x89HDF\r\n\x1a\nnot really", "notes.txt": b"hello",
                       "model.xyz": b"???"}.items():
        (tmp_path / name).write_bytes(data)
        files[name] = tmp_path / name
    return files


@pytest.mark.parametrize("args, fragments", [
    (["convert", "{missing}", "-o", "{out}/m.onnx"], ["does not exist"]),
    (["convert", "{folder}", "-o", "{out}/m.onnx"], ["not a TensorFlow SavedModel"]),
    (["convert", "{empty_onnx}", "-o", "{out}/m.onnx"], ["is empty"]),
    (["convert", "{corrupt_onnx}", "-o", "{out}/m.onnx"], ["not a valid ONNX model"]),
    (["convert", "{corrupt_pt}", "-o", "{out}/m.onnx", "--input", "1x3"], ["not a readable PyTorch file"]),
    (["convert", "{corrupt_h5}", "-o", "{out}/m.onnx"], ["not a readable HDF5 file"]),
    (["convert", "{notes_txt}", "-o", "{out}/m.onnx"], ["cannot tell what kind of model"]),
    (["convert", "{model_xyz}", "-o", "{out}/m.onnx"], ["unknown extension"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:1xAx-3"], ["bad --input"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:2x1x8x8"], ["fixes it to 1"]),
    (["convert", "{tiny}", "-o", "{out}/m.txt"], ["must end in .onnx"]),
    (["convert", "{tiny}", "-o", "{out}/no/such/dir/m.onnx"], ["does not exist"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--target", "toaster"], ["unknown target 'toaster'"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--opset", "99"], ["outside the supported range"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--weights", "{tiny}"], ["--weights needs --model-class"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--calib", "{folder}"], ["no images"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--preprocess", "sepia"], ["unknown preprocessing preset"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--backend", "coreml"], ["unknown backend 'coreml'"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--precision", "int3"], ["does not support precision"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--threads", "0"], ["--threads must be >= 1"]),
    (["run", "{tiny}", "--input", "{missing}"], ["does not exist"]),
    (["run", "{folder}"], ["not an edgekiln artifact"]),
    (["bench", "{tiny}", "--iterations", "0"], ["--iterations"]),
    (["inspect", "{corrupt_onnx}"], ["not a valid ONNX model"]),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx"], ["nothing to do"]),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx", "--fp16", "--dynamic-int8"], ["choose one"]),
    (["calibrate", "{tiny}", "-o", "{out}/m.onnx"], ["Missing option '--calib'"]),
    (["calibrate", "{tiny}", "--calib", "{folder}", "-o", "{out}/m.onnx"], ["no images"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--calib-size", "0"], ["--calib-size"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--calib-size", "999"], ["--calib-size"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--max-drop", "-1"], ["--max-drop"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--target", "toaster"], ["unknown target"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--precision", "int8"], ["needs calibration samples"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--exporter", "magic"], ["--help"]),
    (["frobnicate"], ["No such command"]),
])
def test_bad_input_gets_one_line_and_writes_nothing(args, fragments, bad_inputs, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    names = {"missing": str(tmp_path / "missing.onnx"), "out": str(out), "tiny": str(tiny_onnx),
             "images": str(write_images(tmp_path / "images", count=8)),
             **{k.replace(".", "_"): str(v) for k, v in bad_inputs.items()}}
    code, _, err = run_main([a.format(**names) for a in args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert files_in(out) == []


def test_unwritable_output_folder(tiny_onnx):
    """A read-only output folder. Root ignores permissions, so a forked child drops to 'nobody' first."""
    import tempfile

    shared = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is private to root
    try:
        shared.chmod(0o755)
        model = shared / "tiny.onnx"
        shutil.copy(tiny_onnx, model)
        model.chmod(0o644)
        locked = shared / "locked"
        locked.mkdir(mode=0o555)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: become unprivileged, run the CLI, report exit code and stderr
            os.close(read_end)
            code, err = 99, ""
            try:
                if os.geteuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                import contextlib
                import io

                buffer = io.StringIO()
                with contextlib.redirect_stderr(buffer):
                    try:
                        main(["convert", str(model), "-o", str(locked / "m.onnx")])
                    except SystemExit as exc:
                        code = exc.code
                err = buffer.getvalue()
            finally:
                os.write(write_end, json.dumps({"code": code, "err": err}).encode())
                os._exit(0)
        os.close(write_end)
        with os.fdopen(read_end) as pipe:
            report = json.loads(pipe.read())
        os.waitpid(pid, 0)
        assert_one_line_error(report["code"], report["err"], "not writable")
        assert list(locked.iterdir()) == []
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_output_path_that_is_a_file_used_as_folder(tiny_onnx, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = run_main(["convert", str(tiny_onnx), "-o", str(blocker / "m.onnx")], capsys)
    assert_one_line_error(code, err, "is not a folder")


def test_exit_codes_distinguish_error_kinds(tiny_onnx, bad_inputs, tmp_path, capsys):
    assert run_main(["convert", str(bad_inputs["corrupt.onnx"]), "-o", str(tmp_path / "m.onnx")], capsys)[0] == 3
    assert run_main(["convert", str(tiny_onnx), "-o", str(tmp_path / "m.onnx"), "--input", "x:9"], capsys)[0] == 2


def test_debug_shows_the_traceback(bad_inputs, tmp_path):
    from toolchain.errors import InputFileError

    with pytest.raises(InputFileError):
        main(["--debug", "convert", str(bad_inputs["corrupt.onnx"]), "-o", str(tmp_path / "m.onnx")])


def test_installed_command_in_a_real_process(tiny_onnx, tmp_path):
    beside = Path(sys.executable).with_name("edgekiln")  # the script of the interpreter running the tests
    exe = str(beside) if beside.is_file() else shutil.which("edgekiln")
    assert exe, "the edgekiln console script is not installed"
    done = subprocess.run([exe, "convert", str(tiny_onnx), "-o", str(tmp_path / "m.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "converted onnx" in done.stdout and (tmp_path / "m.onnx").is_file()
    failed = subprocess.run([exe, "inspect", str(tmp_path / "nope.onnx")], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 3 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr


def test_eval_and_run_on_images(tmp_path):
    import onnx

    model = tmp_path / "m.onnx"
    onnx.save(make_onnx_model(batch="N"), str(model))
    for name in ("cat", "dog"):
        write_images(tmp_path / "labels" / name, count=2)
    runner = CliRunner()
    assert runner.invoke(cli, ["compile", str(model), "-o", str(tmp_path / "art")]).exit_code == 0
    result = runner.invoke(cli, ["eval", str(tmp_path / "art"), "--labels", str(tmp_path / "labels"), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["images"] == 4
    image = next((tmp_path / "labels" / "cat").iterdir())
    shown = runner.invoke(cli, ["run", str(tmp_path / "art"), "--input", str(image), "--top-k", "3"])
    assert shown.exit_code == 0 and "top-3" in shown.output


def test_python_module_entry_point(tiny_onnx):
    done = subprocess.run([sys.executable, "-m", "toolchain", "inspect", str(tiny_onnx)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "Conv" in done.stdout


def test_tensorflow_conversion_keeps_stderr_clean(tmp_path):
    """TensorFlow's C++ start-up logs must not bury the report (they are replayed only on failure)."""
    tf = pytest.importorskip("tensorflow")
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    done = subprocess.run([sys.executable, "-m", "toolchain", "convert", str(tmp_path / "m.keras"), "-o",
                           str(tmp_path / "m.onnx")], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "converted keras" in done.stdout


def test_optimize_and_build_with_lowrank(tmp_path):
    """The low-rank pass through the CLI: options parsed, report printed, result verified."""
    from onnx import helper, numpy_helper
    import onnx

    rng = np.random.default_rng(0)
    # A 64x64 weight of rank 8: the energy mode finds the low rank and the factorized model matches.
    weight = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64))).astype(np.float32)
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 64])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    runner = CliRunner()
    result = runner.invoke(cli, ["optimize", str(tmp_path / "m.onnx"), "--lowrank", "--lowrank-energy", "0.999",
                                 "--lowrank-min-params", "1024", "-o", str(tmp_path / "lr.onnx")])
    assert result.exit_code == 0, result.output
    assert "1 layer(s) factorized" in result.output and "fc" in result.output
    bad = runner.invoke(cli, ["optimize", str(tmp_path / "m.onnx"), "--lowrank", "--lowrank-rank", "fc",
                              "-o", str(tmp_path / "x.onnx")])
    assert bad.exit_code != 0 and "NODE=RANK" in str(bad.exception or bad.output)

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

from helpers import assert_one_line_error, make_onnx_model, run_main, write_images
from toolchain.cli import cli, main


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


@pytest.mark.parametrize("debug", [["--debug"], ["EDGEKILN_DEBUG=1"]], ids=["flag", "environment"])
def test_debug_adds_the_traceback_and_keeps_the_exit_code(debug, tiny_onnx, bad_inputs, tmp_path):
    """Issue #17: --debug turned exit code 2 into Python's 1. The same line and code, plus the traceback."""
    env = dict(os.environ, **dict(d.split("=") for d in debug if "=" in d))
    flags = [d for d in debug if d.startswith("--")]
    for args, code in ((["convert", str(tiny_onnx), "-o", str(tmp_path / "m.onnx"), "--input", "x:9"], 2),
                       (["convert", str(bad_inputs["corrupt.onnx"]), "-o", str(tmp_path / "m.onnx")], 3)):
        plain = subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, timeout=60)
        traced = subprocess.run([sys.executable, "-m", "toolchain", *flags, *args], capture_output=True, text=True,
                                timeout=60, env=env)
        assert plain.returncode == traced.returncode == code, traced.stderr
        assert "Traceback" not in plain.stderr and "Traceback (most recent call last)" in traced.stderr
        assert traced.stderr.splitlines()[-1] == plain.stderr.strip()  # the one line still ends it


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
    import onnx

    from helpers import make_single_layer_model

    rng = np.random.default_rng(0)
    # A 64x64 weight of rank 8: the energy mode finds the low rank and the factorized model matches.
    weight = (rng.standard_normal((64, 8)) @ rng.standard_normal((8, 64))).astype(np.float32)
    onnx.save(make_single_layer_model(weight, "Gemm"), str(tmp_path / "m.onnx"))
    runner = CliRunner()
    result = runner.invoke(cli, ["optimize", str(tmp_path / "m.onnx"), "--lowrank", "--lowrank-energy", "0.999",
                                 "--lowrank-min-params", "1024", "-o", str(tmp_path / "lr.onnx")])
    assert result.exit_code == 0, result.output
    assert "1 layer(s) factorized" in result.output and "fc" in result.output
    bad = runner.invoke(cli, ["optimize", str(tmp_path / "m.onnx"), "--lowrank", "--lowrank-rank", "fc",
                              "-o", str(tmp_path / "x.onnx")])
    assert bad.exit_code != 0 and "NODE=RANK" in str(bad.exception or bad.output)


def test_build_ends_with_next_steps_on_stderr_except_quiet_or_json(tmp_path, capsys):
    """Issue #17: after a build, where the artifacts are and ready-to-paste commands for them."""
    import onnx

    onnx.save(make_onnx_model(batch="N"), str(tmp_path / "m.onnx"))
    write_images(tmp_path / "images", count=20)
    args = ["build", str(tmp_path / "m.onnx"), "--target", "x86", "--target", "x86:int8", "--calib",
            str(tmp_path / "images"), "--bench-iterations", "0"]
    code, out, err = run_main([*args, "-o", str(tmp_path / "b")], capsys)
    assert code == 0, err
    steps = err[err.index("next steps:"):].splitlines()
    first_image = tmp_path / "images" / "img_0.png"
    assert f"  x86-int8 (onnxruntime, int8): {tmp_path / 'b' / 'x86-int8'}/" in steps
    assert f"    edgekiln run {tmp_path / 'b' / 'x86'} --input {first_image}" in steps
    assert f"    edgekiln bench {tmp_path / 'b' / 'x86-int8'}" in steps
    assert steps[-1].startswith(f"  report: {tmp_path / 'b' / 'report.html'}")
    assert "next steps" not in out  # stdout keeps the tables only
    ran = subprocess.run([sys.executable, "-m", "toolchain", "run", str(tmp_path / "b" / "x86"), "--input",
                          str(first_image)], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0 and "top-" in ran.stdout  # the printed command works as printed
    for quiet in (["-q"], ["--json"]):
        code, out, err = run_main([*args, "-o", str(tmp_path / "q"), *quiet], capsys)
        assert code == 0 and "next steps" not in err + out


def test_compile_for_a_jetson_prints_its_summary(tiny_onnx, tmp_path, capsys):
    """A TensorRT bundle's manifest has "int8": null; the summary ended in 'internal error: AttributeError'."""
    code, out, err = run_main(["compile", str(tiny_onnx), "--target", "jetson-nano", "-o", str(tmp_path / "nano")],
                              capsys)
    assert code == 0, err
    assert "compiled" in out and (tmp_path / "nano" / "build_engine.sh").is_file()

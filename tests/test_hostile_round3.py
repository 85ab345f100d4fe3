"""Hostile round 3 (issues #40 and #41): models that run their own code or never end, artifacts that point
outside themselves, signals while a runtime is busy, and blame put where it belongs.

Real TensorFlow, real ONNX Runtime, real processes and real signals. Each test fails without its fix.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fleet_helpers import ctrl_c_reaches_the_child
from helpers import assert_one_line_error, files_in, make_onnx_model, run_main


def _loop_model(path: Path, trips: int = 2**62) -> Path:
    """A Loop whose trip count (2^62) never ends in practice; the body adds 1 to a 1x4 tensor."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
    graph = helper.make_graph([helper.make_node("Loop", ["M", "c", "x"], ["y"], body=body)], "loop",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor("M", TensorProto.INT64, [], [trips]),
                               helper.make_tensor("c", TensorProto.BOOL, [], [True])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _external(folder: Path, location: str) -> Path:
    model = make_onnx_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "144")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(model.SerializeToString())
    return folder / "model.onnx"


# ------------------------------------------------------------------------------ SavedModels that do I/O


def _saved_model(path: Path, side_effect) -> Path:
    tf = pytest.importorskip("tensorflow")
    module = tf.Module()
    module.w = tf.Variable(tf.ones([4, 2]))

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32, name="x")])
    def serve(x):
        side_effect(tf, x)
        return {"y": tf.nn.relu(tf.matmul(x, module.w))}

    module.serve = serve
    tf.saved_model.save(module, str(path), signatures={"serving_default": serve})
    return path


def test_a_savedmodel_that_writes_a_file_is_refused_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "written_by_the_model"
    model = _saved_model(tmp_path / "writes",
                         lambda tf, x: tf.io.write_file(str(marker), tf.strings.as_string(tf.reduce_sum(x))))
    out = tmp_path / "out"
    out.mkdir()
    code, _, err = run_main(["convert", str(model), "-o", str(out / "m.onnx")], capsys)
    assert_one_line_error(code, err, "WriteFile", "--trust-savedmodel")
    assert code == 3 and not marker.exists() and files_in(out) == []
    # The check is what stopped it: trusted, the same file converts and its graph runs.
    code, _, err = run_main(["convert", str(model), "-o", str(out / "m.onnx"), "--trust-savedmodel"], capsys)
    assert code == 0, err
    assert marker.exists()


def test_a_savedmodel_that_copies_a_secret_is_refused_in_a_build(tmp_path, capsys):
    secret, copy = tmp_path / "secret.txt", tmp_path / "copy.txt"
    secret.write_text("root:$6$hash")
    secret.chmod(0o600)
    model = _saved_model(tmp_path / "copies",
                         lambda tf, x: tf.io.write_file(str(copy), tf.io.read_file(str(secret))))
    code, _, err = run_main(["build", str(model), "-o", str(tmp_path / "b"), "--target", "x86"], capsys)
    assert_one_line_error(code, err, "ReadFile", "WriteFile", "--trust-savedmodel")
    assert not copy.exists() and not (tmp_path / "b").exists()


def test_a_savedmodel_that_only_computes_still_converts(tmp_path, capsys):
    model = _saved_model(tmp_path / "plain", lambda tf, x: None)
    code, _, err = run_main(["convert", str(model), "-o", str(tmp_path / "m.onnx")], capsys)
    assert code == 0, err


def test_the_scan_follows_calls_and_skips_the_savers_functions(tmp_path):
    """A WriteFile inside a tf.cond branch is found; the SavedModel's own save/restore functions (SaveV2,
    RestoreV2, which TF2's loader never runs from the graph) are not reported."""
    pytest.importorskip("tensorflow")
    from toolchain.frontends.savedmodel_ops import unsafe_ops

    def branchy(tf, x):
        tf.cond(tf.reduce_sum(x) > 0, lambda: tf.io.write_file(str(tmp_path / "w"), "x"), lambda: tf.no_op())

    found = unsafe_ops(_saved_model(tmp_path / "branchy", branchy))
    assert {f.op for f in found} == {"WriteFile"}
    assert unsafe_ops(_saved_model(tmp_path / "plain", lambda tf, x: None)) == []


# ------------------------------------------------------------------------------- runs that never end


def test_a_model_that_never_ends_is_stopped_at_the_run_budget(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EDGEKILN_RUN_TIMEOUT", "2")
    out = tmp_path / "out"
    out.mkdir()
    started = time.monotonic()
    code, _, err = run_main(["convert", str(_loop_model(tmp_path / "loop.onnx")), "-o", str(out / "m.onnx")], capsys)
    assert_one_line_error(code, err, "ONNX Runtime ran the model for more than 2 s", "EDGEKILN_RUN_TIMEOUT")
    assert code == 3 and files_in(out) == []
    assert time.monotonic() - started < 60


def test_an_unstoppable_reference_run_is_abandoned_at_its_budget(monkeypatch):
    """TensorFlow and PyTorch runs cannot be asked to stop: the caller gives up on them at the budget."""
    from toolchain.watchdog import RunTimeout, abandoned, run_bounded

    monkeypatch.setenv("EDGEKILN_RUN_TIMEOUT", "0.5")
    release = __import__("threading").Event()
    with pytest.raises(RunTimeout, match="PyTorch ran the model for more than 0.5 s"):
        run_bounded(lambda: release.wait(30), "PyTorch")
    assert abandoned()
    release.set()
    assert run_bounded(lambda: 7, "PyTorch") == 7


def _edgekiln(*args: str) -> list[str]:
    return [sys.executable, "-m", "toolchain", *args]


@pytest.mark.parametrize("signum, code, last_line", [
    (signal.SIGINT, 130, "interrupted"),
    (signal.SIGTERM, 143, "edgekiln: terminated (SIGTERM)"),
    (signal.SIGHUP, 129, "edgekiln: terminated (SIGHUP)"),
    (signal.SIGQUIT, 131, "edgekiln: terminated (SIGQUIT)"),
], ids=["sigint", "sigterm", "sighup", "sigquit"])
def test_a_signal_stops_a_build_stuck_in_a_model_run(tmp_path, signum, code, last_line):
    """Was: Ctrl-C and SIGTERM ignored while ONNX Runtime ran the Loop (only SIGKILL stopped it); SIGHUP and
    SIGQUIT killed the process and left the staging folder beside the output."""
    model = _loop_model(tmp_path / "loop.onnx")
    out = tmp_path / "out"
    env = {**os.environ, "EDGEKILN_RUN_TIMEOUT": "600"}
    process = subprocess.Popen(_edgekiln("build", str(model), "-o", str(out), "--bench-iterations", "0"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=ctrl_c_reaches_the_child)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "the build never started"
        time.sleep(0.05)
    time.sleep(3)  # well inside the first model run, which never ends
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=30)
    assert time.monotonic() - sent < 10, "the signal waited for the runtime"
    assert process.returncode == code, err
    assert err.strip().splitlines()[-1] == last_line and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")] == []


# ------------------------------------------------------------------------------------ one line each


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, str]:
    """A real compiled artifact, and copies whose manifest points elsewhere or is hostile."""
    root = tmp_path_factory.mktemp("artifacts")
    model = root / "tiny.onnx"
    onnx.save(make_onnx_model(), str(model))
    other = root / "elsewhere" / "other.onnx"
    other.parent.mkdir()
    onnx.save(make_onnx_model(), str(other))
    good = root / "good"
    subprocess.run(_edgekiln("compile", str(model), "-o", str(good)), check=True, capture_output=True, timeout=300)
    paths = {"good": str(good), "image": str(root / "x.npy")}
    np.save(root / "x.npy", np.zeros((1, 1, 8, 8), np.float32))

    def copy(name: str, edit) -> None:
        target = root / name
        subprocess.run(["cp", "-r", str(good), str(target)], check=True)
        edit(target)
        paths[name] = str(target)

    def model_file(value: str):
        def edit(folder: Path) -> None:
            manifest = json.loads((folder / "manifest.json").read_text())
            manifest["model_file"] = value
            (folder / "manifest.json").write_text(json.dumps(manifest))
        return edit

    copy("up", model_file("../../../../etc/passwd"))
    copy("absolute", model_file("/etc/passwd"))
    copy("other", model_file(os.path.relpath(other, root / "other")))
    copy("other_absolute", model_file(str(other)))
    copy("swapped", lambda folder: _loop_model(folder / "model.onnx"))
    copy("deep", lambda folder: (folder / "manifest.json").write_text('{"a":' * 100_000 + "1" + "}" * 100_000))
    return paths


@pytest.mark.parametrize("args, fragments", [
    (["run", "{up}", "--input", "{image}"], ["outside the artifact folder", "../../../../etc/passwd"]),
    (["bench", "{absolute}"], ["outside the artifact folder", "/etc/passwd"]),
    (["run", "{other}", "--input", "{image}"], ["outside the artifact folder", "other.onnx"]),
    (["bench", "{other_absolute}"], ["outside the artifact folder"]),
    (["run", "{swapped}", "--input", "{image}"], ["not the one its manifest recorded", "sha256"]),
    (["bench", "{deep}"], ["nests too deep"]),
], ids=["relative", "absolute", "other-model", "other-model-absolute", "swapped-model", "deep-manifest"])
def test_an_artifact_that_points_outside_itself_is_refused(args, fragments, artifacts, capsys):
    code, _, err = run_main([a.format(**artifacts) for a in args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert code == 3


def test_the_untampered_artifact_still_runs(artifacts, capsys):
    code, out, err = run_main(["run", artifacts["good"], "--input", artifacts["image"]], capsys)
    assert code == 0, err


def _deep_keras(path: Path, depth: int = 200_000) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", '{"a":' * depth + "1" + "}" * depth)
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.5.0"}))
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    fifo_model = _external(tmp_path / "ext_fifo", "pipe")
    os.mkfifo(tmp_path / "ext_fifo" / "pipe")
    folder_model = _external(tmp_path / "ext_folder", "sub")
    (tmp_path / "ext_folder" / "sub").mkdir()
    npy = tmp_path / "npy"
    npy.mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        sample = rng.random((1, 8, 8), dtype=np.float32)
        if i == 3:
            sample[0, 2, 2] = np.nan
        np.save(npy / f"s{i}.npy", sample)
    rows = rng.random((20, 1, 8, 8), dtype=np.float32)
    rows[7, 0, 1, 1] = np.inf
    np.save(tmp_path / "rows.npy", rows)
    tiny = tmp_path / "tiny.onnx"
    onnx.save(make_onnx_model(), str(tiny))
    (tmp_path / "out").mkdir()
    (tmp_path / "cache").mkdir()
    return {"nul": str(_external(tmp_path / "ext_nul", "w\x00.bin")), "fifo": str(fifo_model),
            "folder": str(folder_model), "deep_keras": str(_deep_keras(tmp_path / "deep.keras")),
            "npy_nan": str(npy), "rows_inf": str(tmp_path / "rows.npy"), "tiny": str(tiny),
            "out": str(tmp_path / "out"), "cache": str(tmp_path / "cache"), "long_name": "x" * 4400,
            "long_path": "/".join(["y" * 200] * 22)}


ONE_LINE = [
    (["convert", "{nul}", "-o", "{out}/m.onnx"], 3, ["tensor 'w'", "NUL byte"]),
    (["convert", "{folder}", "-o", "{out}/m.onnx"], 3, ["'sub' for tensor 'w' is a folder"]),
    (["convert", "{fifo}", "-o", "{out}/m.onnx"], 3, ["'pipe' for tensor 'w' is a FIFO"]),
    (["convert", "{deep_keras}", "-o", "{out}/m.onnx"], 3, ["nests too deep"]),
    (["convert", "{tiny}", "-o", "{out}/{long_name}.onnx"], 7, ["a name of 4405 bytes", "Choose a shorter name"]),
    (["convert", "{tiny}", "-o", "{out}/{long_path}.onnx"], 7, ["paths on this system stop at"]),
    (["build", "{tiny}", "-o", "{out}/{long_name}"], 7, ["a name of 4400 bytes"]),
    (["calibrate", "{tiny}", "--calib", "{npy_nan}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], 3,
     ["calibration sample 's3.npy' holds 1 NaN value", "index (0, 2, 2)"]),
    (["calibrate", "{tiny}", "--calib", "{rows_inf}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], 3,
     ["calibration sample 7 of 'rows.npy' holds 1 Inf value"]),
]


@pytest.mark.parametrize("args, exit_code, fragments", ONE_LINE,
                         ids=["ext-nul", "ext-folder", "ext-fifo", "deep-keras", "long-name", "long-path",
                              "build-long-name", "npy-nan", "rows-inf"])
def test_bad_input_gets_one_line_and_leaves_nothing(args, exit_code, fragments, files, capsys):
    code, _, err = run_main([a.format(**files) for a in args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert code == exit_code
    assert "the source model" not in err and "FP32 model itself" not in err  # the sample is blamed, not the model
    assert files_in(Path(files["out"])) == [] and files_in(Path(files["cache"])) == []


# ------------------------------------------------------------------------------------ caches unusable


def test_a_cache_dir_that_is_a_file_is_said_up_front(tmp_path, capsys):
    onnx.save(make_onnx_model(), str(tmp_path / "tiny.onnx"))
    (tmp_path / "cachefile").write_text("not a folder")
    code, out, err = run_main(["build", str(tmp_path / "tiny.onnx"), "-o", str(tmp_path / "b"), "--cache-dir",
                               str(tmp_path / "cachefile"), "--bench-iterations", "0"], capsys)
    assert code == 0, err
    assert "cache '" in out + err and "not used: it is a file, not a folder" in out + err


def test_a_cache_on_a_full_disk_is_said_up_front(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        (disk / "fill").write_bytes(bytes(1000 * 1024))
        onnx.save(make_onnx_model(), str(tmp_path / "tiny.onnx"))
        code, out, err = run_main(["build", str(tmp_path / "tiny.onnx"), "-o", str(tmp_path / "b"), "--cache-dir",
                                   str(disk / "cache"), "--bench-iterations", "0"], capsys)
        assert code == 0, err
        assert "KiB free, so new stages may not be cached" in out + err
    finally:
        subprocess.run(["umount", str(disk)], check=False)

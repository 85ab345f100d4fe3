"""``--json`` on every command: stdout is exactly one JSON document, a result or an error object.

Each command runs through the real entry point (``toolchain.cli.main``) on tiny real models; the
failures are real bad inputs. The exit code with --json is the one without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from helpers import make_onnx_model, run_main, write_images
from toolchain.cli import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "toolchain" / "examples" / "fashion_mnist"
FASHION = ["--model-class", "toolchain.examples.fashion_mnist.model:FashionCNN", "--weights",
           str(EXAMPLE / "weights.pth"), "--input", "1x1x28x28"]


def _json(args: list[str], capsys, code: int = 0):
    """Run ``args`` with --json; the exit code must be ``code`` and stdout one JSON document."""
    got, out, err = run_main([*args, "--json"], capsys)
    assert got == code, (args, err)
    document = json.loads(out)
    if code:
        error = document["error"]
        assert error["exit_code"] == code and error["message"] and error["kind"]
        assert err.strip().splitlines()[-1].startswith(("error: ", "internal error: "))  # stderr keeps its line
    return document


@pytest.fixture
def made(tmp_path: Path) -> dict[str, Path]:
    """A dynamic-batch ONNX model, images for it, and a compiled artifact."""
    model = tmp_path / "m.onnx"
    onnx.save(make_onnx_model(batch="N"), str(model))
    for name in ("cat", "dog"):
        write_images(tmp_path / "labels" / name, count=10)
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    return {"model": model, "labels": tmp_path / "labels", "npy": tmp_path / "x.npy", "root": tmp_path}


def test_model_commands_print_their_result(made, capsys):
    root, model = made["root"], made["model"]
    converted = _json(["convert", str(model), "-o", str(root / "c.onnx")], capsys)
    assert converted["output"] == str(root / "c.onnx") and converted["inputs"][0]["name"] == "x"
    assert converted["parity"][0]["outputs"][0]["passed"] is True
    optimized = _json(["optimize", str(model), "--simplify", "-o", str(root / "s.onnx")], capsys)
    assert optimized["passes"][0]["name"] == "simplify"
    compiled = _json(["compile", str(model), "-o", str(root / "art")], capsys)
    assert compiled["artifact"]["path"] == str(root / "art") and compiled["artifact"]["manifest"]["backend"]
    calibrated = _json(["calibrate", str(model), "--calib", str(made["labels"]), "--holdout", "8",
                        "-o", str(root / "q.onnx")], capsys)
    assert calibrated["output"] == str(root / "q.onnx") and calibrated["guard"]["passed"] is True
    ran = _json(["run", str(root / "art"), "--input", str(made["npy"])], capsys)
    assert np.asarray(ran["y"]).shape == (1, 10)
    assert _json(["bench", str(root / "art"), "--iterations", "2", "--warmup", "0"], capsys)["p50_ms"] > 0
    assert _json(["inspect", str(model)], capsys)["inputs"][0]["name"] == "x"
    compared = _json(["compare", str(model), str(root / "q.onnx"), "--count", "2"], capsys)
    assert compared["comparisons"][0]["samples"] == 2
    assert _json(["eval", str(root / "art"), "--labels", str(made["labels"])], capsys)["images"] == 20


def test_listing_commands_print_their_result(capsys):
    assert "onnxruntime" in [row["name"] for row in _json(["backends"], capsys)]
    targets = _json(["targets"], capsys)
    assert {"x86", "rpi4", "mcu", "jetson-nano"} <= {t["name"] for t in targets}
    assert all(set(t) >= {"backend", "precision", "opset"} for t in targets)


def test_build_prints_the_report_and_a_dry_run_the_plan(made, capsys):
    out = made["root"] / "build"
    common = [str(made["model"]), "--target", "x86", "--bench-iterations", "0", "-o", str(out)]
    plan = _json(["build", *common, "--dry-run"], capsys)
    assert plan[0]["stage"] == "convert" and {"key", "cached"} <= set(plan[0])
    report = _json(["build", *common], capsys)
    assert [t["artifact"] for t in report["targets"]] == ["x86"] and (out / "x86").is_dir()


def test_fleet_prints_its_report_and_a_dry_run_its_plan(tmp_path, capsys):
    from fleet_helpers import write_fleet

    fleet = write_fleet(tmp_path / "f", count=2, targets="[x86]")
    common = ["fleet", str(fleet), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"), "--no-ray"]
    plan = _json([*common, "--dry-run"], capsys)
    assert [m["name"] for m in plan["models"]] == ["m0", "m1"] and plan["targets"] == ["x86"]
    report = _json(common, capsys)
    assert set(report["summary"]) == {"m0", "m1"} and all(c.get("ok") for c in report["summary"].values())
    assert {t["model"] for t in report["tasks"]} == {"m0", "m1"} and all(t["status"] == "ok" for t in report["tasks"])


def test_a_build_with_failed_targets_prints_the_error_with_its_report(made, capsys):
    document = _json(["build", str(made["model"]), "--target", "x86", "--target", "x86:int8", "--calib",
                      str(made["labels"]), "--holdout", "8", "--min-cosine", "0.9999999", "--bench-iterations", "0",
                      "-o", str(made["root"] / "b")], capsys, code=8)
    assert document["error"]["kind"] == "targets_failed" and "x86-int8 refused" in document["error"]["message"]
    assert {t["artifact"]: t["status"] for t in document["result"]["targets"]} == {"x86": "ok", "x86-int8": "refused"}
    # A recipe's `json: true` is --json too, failures included.
    recipe = made["root"] / "recipe.yaml"
    recipe.write_text(f"source: {made['model']}\ntargets: [x86, 'x86:int8']\ncalib: {made['labels']}\nholdout: 8\n"
                      "min-cosine: 0.9999999\nbench-iterations: 0\njson: true\n")
    code, out, err = run_main(["build", "-c", str(recipe), "-o", str(made["root"] / "r")], capsys)
    assert code == 8 and json.loads(out)["error"]["kind"] == "targets_failed", err


# One failing command line per command: a missing file, or a bad option where a command reads no file.
FAILURES = {
    "convert": (["convert", "missing.onnx", "-o", "{root}/m.onnx"], 3, "input_file"),
    "optimize": (["optimize", "{model}", "-o", "{root}/o.onnx"], 2, "usage"),  # no pass chosen
    "compile": (["compile", "{model}", "--backend", "nope", "-o", "{root}/a"], 2, "usage"),
    "calibrate": (["calibrate", "{model}", "--calib", "{root}/nothing", "-o", "{root}/q.onnx"], 3, "input_file"),
    "run": (["run", "{root}/missing"], 3, "input_file"),
    "bench": (["bench", "{root}/missing"], 3, "input_file"),
    "inspect": (["inspect", "{root}/missing.onnx"], 3, "input_file"),
    "compare": (["compare", "{model}", "{root}/missing.onnx"], 3, "input_file"),
    "verify": (["verify", "{root}/missing", "--on", "qemu-aarch64"], 3, "input_file"),
    "eval": (["eval", "{root}/missing", "--labels", "{root}"], 3, "input_file"),
    "backends": (["backends", "--bogus"], 2, "usage"),
    "targets": (["targets", "--bogus"], 2, "usage"),
    "build": (["build", "{model}", "--target", "nowhere", "-o", "{root}/b"], 2, "usage"),
    "prune": (["prune", *FASHION, "--ratio", "1.5", "-o", "{root}/p.pt"], 2, "usage"),
    "fleet": (["fleet", "{root}/missing.yaml", "--no-ray"], 2, "usage"),  # as a missing recipe
    "distill": (["distill", "--student-class", "nowhere.py:Net", "--images", "{root}/missing", "--input",
                 "1x1x8x8", "-o", "{root}/s.pt"], 2, "usage"),  # no teacher
    "qat": (["qat", *FASHION, "--calib", "{root}/missing", "-o", "{root}/q.onnx"], 3, "input_file"),
}


def test_every_command_is_covered():
    assert set(FAILURES) == set(cli.commands)


@pytest.mark.parametrize("command", sorted(FAILURES))
def test_a_failure_is_one_json_error_with_the_usual_exit_code(command, made, capsys):
    args, code, kind = FAILURES[command]
    args = [a.format(root=made["root"], model=made["model"]) for a in args]
    plain_code, _, plain_err = run_main(args, capsys)
    assert plain_code == code, plain_err
    document = _json(args, capsys, code=code)
    assert set(document) == {"error"} and set(document["error"]) == {"message", "exit_code", "kind", "hint"}
    assert document["error"]["kind"] == kind and document["error"]["message"] in plain_err


def test_usage_errors_before_parsing_are_json_too(capsys):
    document = _json(["targets", "--jsn"], capsys, code=2)
    assert document["error"]["kind"] == "usage" and "--jsn" in document["error"]["message"]
    assert "edgekiln targets --help" in document["error"]["hint"]


@pytest.mark.slow
def test_compression_commands_print_their_result(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("torch_pruning")
    samples = str(EXAMPLE / "samples")
    pruned = _json(["prune", *FASHION, "--ratio", "0.5", "--calib", samples, "--recover-epochs", "1",
                    "--iterations", "2", "--no-cache", "-o", str(tmp_path / "p.pt")], capsys)
    assert pruned["output"] == str(tmp_path / "p.pt") and pruned["report"]["mode"] == "structured"
    qat = _json(["qat", *FASHION, "--calib", samples, "--epochs", "1", "--holdout", "60", "--iterations", "2",
                 "-o", str(tmp_path / "q.onnx")], capsys)
    assert qat["output"] == str(tmp_path / "q.onnx")
    distilled = _json(["distill", "--teacher", str(tmp_path / "p.pt"), "--student-class",
                       "toolchain.examples.fashion_mnist.model:FashionCNN", "--images", samples, "--input",
                       "1x1x28x28", "--epochs", "1", "--iterations", "2", "-o", str(tmp_path / "s.pt")], capsys)
    assert distilled["output"] == str(tmp_path / "s.pt")


def test_the_readme_lists_every_error_kind_with_its_exit_code():
    """Each error class, a bug and both signals map to the kind and code the README documents."""
    import re
    import signal

    from toolchain import errors, failures

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    listed = dict(re.findall(r"`([a-z_]+)` \((\d+)\)", " ".join(readme[readme.index("`kind` is "):].split()[:40])))
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ToolchainError)]
    described = {failures.kind(cls("x")): cls.exit_code for cls in classes if cls is not errors.ToolchainError}
    for failure in (failures.describe(ZeroDivisionError("x"), [], []), failures.interruption([signal.SIGINT]),
                    failures.interruption([signal.SIGTERM])):
        described[failure.kind] = failure.exit_code
    assert {k: int(v) for k, v in listed.items()} == described


@pytest.mark.slow
def test_verify_prints_its_result(made, capsys):
    """verify on aarch64 LiteRT under QEMU (needs the prepared tool cache, as tests/backends/test_rpi_qemu.py)."""
    import os

    from backends.tflite import TFLiteBackend, emulate
    from backends.tflite.tool_cache import TOOLS_ENV

    tools = os.environ.get(TOOLS_ENV)
    missing = emulate.missing(Path(tools)) if tools else f"${TOOLS_ENV} is not set"
    if not TFLiteBackend().is_available()[0] or missing:
        pytest.skip(f"aarch64 LiteRT under QEMU: {missing or 'no tflite backend'}")
    artifact = made["root"] / "tfl"
    _json(["compile", str(made["model"]), "--backend", "tflite", "-o", str(artifact)], capsys)
    verified = _json(["verify", str(artifact), "--on", "qemu-aarch64", "--count", "2"], capsys)
    assert verified["device"] == "qemu-aarch64" and verified["artifact"] == str(artifact) and verified["seconds"] > 0


def test_json_documents_are_strict_json():
    """NaN and infinities (a broken model's outputs) become null: JSON has no NaN, and parsers reject it."""
    from toolchain.json_output import jsonable

    assert jsonable({"y": np.array([1.0, np.nan, -np.inf], np.float32), "n": np.int64(3), "p": Path("a/b")}) == {
        "y": [1.0, None, None], "n": 3, "p": "a/b"}

"""The fleet file, its plan and the in-process engine (--no-ray): no Ray needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fleet_helpers import write_fleet, write_model
from helpers import assert_one_line_error, run_main
from toolchain.fleet.inspect import delivered_digests
from toolchain.fleet.plan import plan_fleet
from toolchain.fleet.spec import load_fleet


def _error(tmp_path, text: str, capsys, *fragments: str) -> None:
    path = tmp_path / "f.yaml"
    write_model(tmp_path / "m.onnx", 0)
    path.write_text(text)
    code, _out, err = run_main(["fleet", str(path), "--dry-run", "--cache-dir", str(tmp_path / "c")], capsys)
    assert_one_line_error(code, err, *fragments)


@pytest.mark.parametrize("text, fragments", [
    ("models:\n  - source: m.onnx\n    targets: [x86, pi9]\n", ("f.yaml:3:", "unknown target 'pi9'")),
    ("models:\n  - source: m.onnx\n  - source: [\n", ("f.yaml:", "invalid YAML")),
    ("modles:\n  - m.yaml\n", ("f.yaml:1:", "unknown key 'modles'", "did you mean 'models'")),
    ("models:\n  - source: m.onnx\n  - source: gone.onnx\n", ("f.yaml:3:", "model 'gone'", "does not exist")),
    ("models:\n  - source: m.onnx\n  - {source: m.onnx}\n", ("f.yaml:3:", "'m' is used twice")),
    ("models:\n  - recipe: nope.yaml\n", ("f.yaml:2:", "recipe 'nope.yaml' does not exist")),
    ("models:\n  - source: m.onnx\n    output: x\n", ("f.yaml:3:", "'output' is set for the whole fleet")),
    ("models:\n  - source: m.onnx\n    calib-sise: 3\n", ("f.yaml:3:", "unknown key 'calib-sise'")),
    ("models:\n  - source: m.onnx\nresources:\n  x86: {num_gpus: lots}\n", ("f.yaml:4:", "resources of 'x86'")),
    ("targets: x86\n", ("f.yaml:1:", "lists no 'models'")),
])
def test_bad_fleet_files_are_one_line_with_file_and_line(tmp_path, capsys, text, fragments):
    _error(tmp_path, text, capsys, *fragments)


def test_a_missing_fleet_file_is_one_line(tmp_path, capsys):
    code, _out, err = run_main(["fleet", str(tmp_path / "none.yaml"), "--no-ray"], capsys)
    assert_one_line_error(code, err, "no such fleet file")


def test_recipe_models_take_defaults_then_recipe_then_inline_keys(tmp_path):
    write_model(tmp_path / "m.onnx", 0)
    (tmp_path / "r.yaml").write_text("source: m.onnx\nbench-iterations: 7\noutput: elsewhere\ntargets: [x86]\n")
    (tmp_path / "f.yaml").write_text("targets: [x86, x86:fp16]\ndefaults: {bench-iterations: 1, seed: 3}\n"
                                     "models:\n  - r.yaml\n  - {recipe: r.yaml, name: r2, seed: 5}\n")
    spec = load_fleet(tmp_path / "f.yaml")
    first, second = spec.models
    assert (first.name, first.values["bench_iterations"], first.values["seed"], first.values["targets"]) == \
        ("r", 7, 3, ["x86"])
    assert "output" not in first.values  # the recipe's own output is for a single build
    assert (second.name, second.values["seed"]) == ("r2", 5)


def test_dry_run_prints_models_targets_tasks_and_writes_nothing(fleet_file, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, _err = run_main(["fleet", str(fleet_file), "-o", str(out), "--cache-dir", str(tmp_path / "c"),
                                   "--dry-run"], capsys)
    assert code == 0
    assert "2 models x 2 targets (x86, x86-int8), 8 tasks: 8 to run, 0 cached" in stdout
    assert "prepare: convert, simplify" in stdout and "x86-int8: compile x86-int8, measure x86-int8" in stdout
    assert not out.exists() and not (tmp_path / "c").exists()


def test_no_ray_delivers_every_model_and_a_rerun_is_all_cached(fleet_file, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "c"
    args = ["fleet", str(fleet_file), "-o", str(out), "--cache-dir", str(cache), "--no-ray"]
    code, _stdout, err = run_main(args, capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert len(lines) == 8 and all(" ok " in line for line in lines)
    report = json.loads((out / "report.json").read_text())
    assert report["summary"] == {"m0": {"ok": 4, "cached": 0}, "m1": {"ok": 4, "cached": 0}}
    assert [t["artifact"] for t in report["models"][0]["targets"]] == ["x86", "x86-int8"]
    assert report["models"][0]["targets"][1]["agreement"]["top1_agreement"] is not None
    assert (out / "m0" / "x86-int8" / "model.onnx").is_file() and (out / "m1" / "report.json").is_file()
    html = (out / "report.html").read_text()
    assert "<h2 id=\"model-m0\">m0</h2>" in html and "KiB" in html
    first = delivered_digests(out)
    code, _stdout, err = run_main(args, capsys)
    assert code == 0 and err.count(" cached ") == 8
    assert delivered_digests(out) == first


def test_a_failing_target_is_reported_and_the_other_models_delivered(tmp_path, capsys):
    # An accuracy budget no INT8 model meets: the guard refuses m0's x86-int8, and only that.
    fleet = write_fleet(tmp_path / "f", count=2).read_text().replace(
        "  - source: m0.onnx\n", "  - {source: m0.onnx, min-cosine: 0.9999999, max-drop: 0.0}\n")
    (tmp_path / "f" / "fleet.yaml").write_text(fleet)
    out = tmp_path / "out"
    code, _stdout, err = run_main(["fleet", str(tmp_path / "f" / "fleet.yaml"), "-o", str(out), "--cache-dir",
                                   str(tmp_path / "c"), "--no-ray"], capsys)
    assert code == 8
    assert "m0 x86-int8 refused" in err and err.strip().splitlines()[-1].startswith("error: 1 of 8 fleet tasks")
    report = json.loads((out / "report.json").read_text())
    m0, m1 = report["models"]
    assert [t["status"] for t in m0["targets"]] == ["ok", "refused"]
    assert "accuracy budget" in m0["targets"][1]["error"]["message"]
    assert [t["status"] for t in m1["targets"]] == ["ok", "ok"]
    assert not (out / "m0" / "x86-int8").exists() and (out / "m1" / "x86-int8" / "model.onnx").is_file()
    assert "refused" in (out / "report.html").read_text()
    code, _stdout, err = run_main(["fleet", str(tmp_path / "f" / "fleet.yaml"), "-o", str(tmp_path / "ff"),
                                   "--cache-dir", str(tmp_path / "c"), "--no-ray", "--fail-fast"], capsys)
    assert code == 8 and "--fail-fast" in err and not (tmp_path / "ff").exists()


def test_changing_one_model_reruns_only_its_tasks(fleet_file, tmp_path):
    from toolchain.fleet.run import run_fleet

    cache = tmp_path / "c"
    run_fleet(plan_fleet(load_fleet(fleet_file), tmp_path / "a", cache), engine="local")
    write_model(fleet_file.parent / "m1.onnx", 10.0)  # "retrained"
    plan = plan_fleet(load_fleet(fleet_file), tmp_path / "b", cache)
    assert {t.id: t.cached for t in plan.tasks if not t.cached} == {
        "m1/prepare": False, "m1/reference": False, "m1/x86": False, "m1/x86-int8": False}
    result = run_fleet(plan, engine="local")
    assert sorted(r["model"] for r in result.results if not r["cached"]) == ["m1"] * 4
    assert delivered_digests(tmp_path / "a" / "m0") == delivered_digests(tmp_path / "b" / "m0")


def _without_ray(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the CLI in a fresh interpreter where importing ray fails, as on a machine without it."""
    script = ("import importlib.abc, sys\n"
              "class Blocker(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name.split('.')[0] == 'ray': raise ModuleNotFoundError(name, name=name)\n"
              "sys.meta_path.insert(0, Blocker())\n"
              "from toolchain.cli import main\n"
              f"main({args!r})\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])})


def test_without_ray_the_fleet_says_what_to_install_and_no_ray_still_builds(fleet_file, tmp_path):
    done = _without_ray(["fleet", str(fleet_file), "-o", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c")])
    assert done.returncode == 6
    assert done.stderr.strip() == ("error: edgekiln fleet on Ray needs the 'ray' package. "
                                   "pip install 'edgekiln[fleet]', or run with --no-ray")
    done = _without_ray(["fleet", str(fleet_file), "-o", str(tmp_path / "o"), "--cache-dir", str(tmp_path / "c"),
                         "--no-ray"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "m1" / "x86-int8" / "model.onnx").is_file()


def test_an_unreachable_address_is_one_line_before_any_planning(fleet_file, tmp_path, capsys):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as unused:  # a port nobody listens at: bind, note it, close
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    code, _out, err = run_main(["fleet", str(fleet_file), "-o", str(tmp_path / "o"), "--address",
                                f"127.0.0.1:{port}"], capsys)
    assert_one_line_error(code, err, f"cannot reach the Ray cluster at '127.0.0.1:{port}'", "--no-ray")
    code, _out, err = run_main(["fleet", str(fleet_file), "--address", "nowhere"], capsys)
    assert_one_line_error(code, err, "--address 'nowhere' is not auto, HOST:PORT or ray://HOST:PORT")

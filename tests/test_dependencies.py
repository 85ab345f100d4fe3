"""Start-up stays light, and the tool works (and explains itself) with only the core dependencies.

Both run in fresh interpreters, so nothing imported by other tests can hide a heavy import.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import backends
import calibration
import toolchain

HEAVY = ("torch", "tensorflow", "onnx2tf", "tensorrt", "keras", "tf2onnx", "ray")
OPTIONAL_MODULES = ("toolchain.examples.fashion_mnist.model", "toolchain.examples.fashion_mnist.train")


def _python(code: str, preamble: str = "") -> subprocess.CompletedProcess:
    script = textwrap.dedent(preamble) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_help_of_every_command_imports_no_heavy_sdk():
    done = _python(f"""
        import json, sys
        from click.testing import CliRunner
        from toolchain.cli import cli
        runner = CliRunner()
        codes = [runner.invoke(cli, ["--help"]).exit_code, runner.invoke(cli, ["--version"]).exit_code]
        codes += [runner.invoke(cli, [name, "--help"]).exit_code for name in cli.commands]
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps({{"codes": codes, "heavy": heavy}}))
    """)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report["codes"]) == {0}
    assert report["heavy"] == []


def _all_modules() -> list[str]:
    names = []
    for package in (toolchain, backends, calibration):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(n for n in names if n not in OPTIONAL_MODULES)


BLOCKER = f"""
    import importlib.abc, sys
    class Blocker(importlib.abc.MetaPathFinder):
        # Simulates a machine with only the core dependencies installed.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {HEAVY!r}:
                raise ModuleNotFoundError(f"No module named '{{name}}'", name=name)
            return None
    sys.meta_path.insert(0, Blocker())
"""


def test_every_module_imports_and_every_help_runs_without_optional_sdks():
    done = _python(f"""
        import importlib
        for name in {_all_modules()!r}:
            importlib.import_module(name)
        from click.testing import CliRunner
        from toolchain.cli import cli
        runner = CliRunner()
        assert all(runner.invoke(cli, [c, "--help"]).exit_code == 0 for c in cli.commands)
        print("ok")
    """, BLOCKER)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("suffix, extra", [(".pt", "torch"), (".keras", "tf")])
def test_missing_sdk_names_the_extra_to_install(tmp_path, suffix, extra):
    model = tmp_path / f"model{suffix}"
    model.write_bytes(b"PK\x05\x06" + b"\x00" * 18)  # an empty zip: enough to reach the framework import
    done = _python(f"""
        from toolchain.cli import main
        main(["convert", {str(model)!r}, "-o", {str(tmp_path / 'm.onnx')!r}, "--input", "1x3"])
    """, BLOCKER)
    assert done.returncode == 6, done.stderr
    assert f"pip install 'edgekiln[{extra}]'" in done.stderr
    assert "Traceback" not in done.stderr

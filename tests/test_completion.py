"""Shell completion through Click's standard mechanism (``_EDGEKILN_COMPLETE``), asked of real processes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from toolchain.cli import cli

HEAVY = ("torch", "tensorflow", "onnx2tf", "tensorrt", "ray", "keras", "tf2onnx")


def _edgekiln() -> str:
    beside = Path(sys.executable).with_name("edgekiln")  # the console script of the interpreter running the tests
    exe = str(beside) if beside.is_file() else shutil.which("edgekiln")
    assert exe, "the edgekiln console script is not installed"
    return exe


def _ask(request: str, words: str = "", cword: int = 0, program: list[str] | None = None) -> str:
    env = dict(os.environ, _EDGEKILN_COMPLETE=request, COMP_WORDS=words, COMP_CWORD=str(cword))
    done = subprocess.run(program or [sys.executable, "-m", "toolchain"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


@pytest.mark.parametrize("program", ["module", "script"])
def test_bash_script_registers_the_edgekiln_command(program):
    script = _ask("bash_source", program=None if program == "module" else [_edgekiln()])
    # The script completes the 'edgekiln' command, also when made with 'python -m toolchain'.
    assert "complete -o nosort -F _edgekiln_completion edgekiln" in script
    assert "_EDGEKILN_COMPLETE=bash_complete" in script and "Usage:" not in script


def test_zsh_and_fish_scripts():
    assert _ask("zsh_source").startswith("#compdef edgekiln")
    assert "complete --no-files --command edgekiln" in _ask("fish_source")


def _values(reply: str) -> list[str]:
    return [line.split(",", 1)[1] for line in reply.splitlines() if line.startswith("plain,")]


def test_completion_requests_return_commands_options_and_targets():
    assert _values(_ask("bash_complete", "edgekiln c", 1)) == sorted(c for c in cli.commands if c.startswith("c"))
    assert set(_values(_ask("bash_complete", "edgekiln ", 1))) == set(cli.commands)
    assert _values(_ask("bash_complete", "edgekiln build --ta", 2)) == ["--target", "--task"]
    assert _values(_ask("bash_complete", "edgekiln compile m.onnx --target jetson-", 4)) == [
        "jetson-nano", "jetson-xavier", "jetson-orin"]


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_bash_itself_completes_through_the_installed_script():
    exe = _edgekiln()
    script = textwrap.dedent(f"""
        eval "$(_EDGEKILN_COMPLETE=bash_source {exe})"
        COMP_WORDS=(edgekiln bu); COMP_CWORD=1; _edgekiln_completion {exe}; echo "${{COMPREPLY[@]}}"
        COMPREPLY=(); COMP_WORDS=(edgekiln build --target rp); COMP_CWORD=3; _edgekiln_completion {exe}
        echo "${{COMPREPLY[@]}}"
        complete -p edgekiln
    """)
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["build", "rpi4 rpi5", "complete -o nosort -F _edgekiln_completion edgekiln"]


def test_completion_imports_no_heavy_sdk_and_no_arguments_still_prints_help():
    code = textwrap.dedent(f"""
        import json, os, sys
        os.environ.update(_EDGEKILN_COMPLETE="bash_complete", COMP_WORDS="edgekiln build --target ", COMP_CWORD="3")
        from toolchain.cli import main
        try:
            main([])
        except SystemExit as exc:
            print(json.dumps({{"code": exc.code, "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout.splitlines()[-1])
    assert report == {"code": 0, "heavy": []}
    assert "plain,rpi4" in done.stdout
    shown = subprocess.run([sys.executable, "-m", "toolchain"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and shown.stdout.startswith("Usage: edgekiln")

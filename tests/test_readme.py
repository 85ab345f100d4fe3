"""The README stays true: its quick start and ``build`` examples run, and its tables match the code.

The commands are read out of README.md, not copied here, so editing the README changes what runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The firmware's C identifiers and the tags its semihosting output is parsed by: EDGEKILN_ names
# that are never read from the environment (they live in backends/tflite only).
NOT_ENVIRONMENT = {"EDGEKILN_ARENA_SIZE", "EDGEKILN_ARENA_USED", "EDGEKILN_DATA", "EDGEKILN_DONE", "EDGEKILN_ERROR",
                   "EDGEKILN_MAX_DIFF_LSB", "EDGEKILN_OUTPUT", "EDGEKILN_START", "EDGEKILN_MODEL_CONFIG_H_",
                   "EDGEKILN_MODEL_DATA_H_", "EDGEKILN_MODEL_OPS_H_", "EDGEKILN_TEST_VECTOR_H_"}
_NAME = re.compile(r"(?<![A-Za-z0-9])_?EDGEKILN_[A-Z0-9_]+")
_SCANNED = ("toolchain", "backends", "calibration", "bench", "docker", "tests", ".ci", "pyproject.toml")
_TEXT_SUFFIXES = {"", ".py", ".sh", ".toml", ".cfg", ".ini", ".txt", ".yaml", ".yml", ".json", ".md", ".jetson",
                  ".cc", ".h", ".ld", ".mk"}


def _section(heading: str) -> str:
    """From ``heading`` to the next heading of its level or above (``#`` lines in code blocks are comments)."""
    lines = README.read_text().splitlines()
    start = lines.index(next(line for line in lines if line.startswith(heading)))
    level, in_code, end = len(heading) - len(heading.lstrip("#")), False, len(lines)
    for number in range(start + 1, len(lines)):
        line = lines[number]
        in_code = in_code != line.startswith("```")
        hashes = len(line) - len(line.lstrip("#"))
        if not in_code and 0 < hashes <= level and line[hashes:hashes + 1] == " ":
            end = number
            break
    return "\n".join(lines[start:end])


def _bash_blocks(section: str) -> list[list[str]]:
    """The commands of each ```bash block: continuation lines joined, comments and blank lines dropped."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", section, re.S):
        joined = re.sub(r"\\\n\s*", "", body)
        lines = [re.sub(r"\s+#.*$", "", line).strip() for line in joined.splitlines()]
        blocks.append([line for line in lines if line and not line.startswith("#")])
    return blocks


def _source_files() -> list[Path]:
    """Text files of the project (code, scripts, Dockerfiles, configuration), this test left out."""
    files = []
    for name in _SCANNED:
        path = ROOT / name
        files += [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return [f for f in files if f.suffix in _TEXT_SUFFIXES and "__pycache__" not in f.parts
            and f.resolve() != Path(__file__).resolve() and f.stat().st_size < 2**21]


def _documented_variables() -> set[str]:
    return set(re.findall(r"^\| `(_?EDGEKILN_[A-Z0-9_]+)` \|", _section("## Environment variables"), re.M))


def test_every_environment_variable_the_code_reads_is_in_the_readme_table():
    found: dict[str, set[str]] = {}
    for path in _source_files():
        for name in _NAME.findall(path.read_text(errors="replace")):
            found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    for name in NOT_ENVIRONMENT:  # never read from the environment, so kept to the firmware code
        assert all(p.startswith(("backends/tflite/", "tests/")) for p in found.get(name, ())), found.get(name)
    variables = set(found) - NOT_ENVIRONMENT
    assert {"EDGEKILN_DEBUG", "EDGEKILN_CACHE_DIR", "_EDGEKILN_COMPLETE"} <= variables  # the scan sees them
    documented = _documented_variables()
    assert sorted(variables - documented) == [], "undocumented: add them to the README's table"
    assert sorted(documented - variables) == [], "documented but read nowhere"


def test_the_documented_test_command_is_what_ci_runs():
    ci_last = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()][-1]
    quick_start = _bash_blocks(_section("## Quick start"))[0]
    assert quick_start[-1] == ci_last


def test_the_json_error_example_is_what_the_command_prints(tmp_path):
    section = _section("## Commands")
    command = re.search(r"`(edgekiln [^`]+ --json)` without that file prints", section).group(1)
    shown = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    done = subprocess.run([sys.executable, "-m", "toolchain", *command.split()[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == shown["error"]["exit_code"] and json.loads(done.stdout) == shown


def _checkout_copy(destination: Path) -> Path:
    """The repository's files (tracked and new, as git lists them) in a fresh folder: pip builds there."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot tell the repository's files from build outputs")
    for name in filter(None, listed.stdout.split("\0")):
        source = ROOT / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def _adapted(line: str) -> str | None:
    """A quick-start line as run here: the same command, except where it would change the machine.

    The virtual environment sees this interpreter's packages (--system-site-packages), so pip
    finds torch 2.13.0+cpu and the rest installed and downloads nothing; edgekiln itself is built
    and installed into it from the copy. Installing python3-venv is skipped where venv works.
    """
    if "apt-get install" in line:
        return None
    if line.startswith("python3 -m venv "):
        return line.replace("python3 -m venv ", f"{sys.executable} -m venv --system-site-packages ", 1)
    return line


def _write_build_inputs(folder: Path) -> None:
    """What the build examples name, made from the bundled example: model.pt, images/, labelled/."""
    torch = pytest.importorskip("torch")
    from toolchain.examples import fashion_mnist
    from toolchain.examples.fashion_mnist.model import FashionCNN

    model = FashionCNN()
    model.load_state_dict(torch.load(fashion_mnist.weights_path(), weights_only=True))
    torch.jit.trace(model.eval(), torch.zeros(fashion_mnist.INPUT_SHAPE)).save(str(folder / "model.pt"))
    for name in ("images", "labelled"):
        shutil.copytree(fashion_mnist.samples_dir(), folder / name)


@pytest.mark.slow
def test_quick_start_and_build_examples_run(tmp_path):
    checkout = _checkout_copy(tmp_path / "checkout")
    steps = _bash_blocks(_section("## Quick start"))[0][:-1]  # the last line runs this test suite
    quick = [line for line in map(_adapted, steps) if line]
    examples = _bash_blocks(_section("### build:"))[0]
    assert any(line.endswith("edgekiln build") for line in quick) and len(examples) >= 3
    _write_build_inputs(checkout)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    script = "set -euo pipefail\n" + "\n".join(quick) + "\n" + "\n".join(f"echo '>>> {i}' >&2\n{line}"
                                                                       for i, line in enumerate(examples))
    done = subprocess.run(["bash", "-c", script], cwd=checkout, capture_output=True, text=True, timeout=1500,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    installed = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c",
                                "import toolchain; print(toolchain.__file__)"], capture_output=True, text=True,
                               env=env, cwd=tmp_path)  # not the checkout: python -c imports from its folder
    assert installed.stdout.startswith(str(checkout / ".venv")), installed.stdout  # built from the copy

    # The quick start's build wrote what the README's table lists, and said what to do next.
    out = checkout / "edgekiln-out"
    table = _section("## Quick start")
    for name in re.findall(r"^\| `([^`]+)` \|", table, re.M):
        assert (out / name.rstrip("/")).exists(), name
    first_build = done.stderr.split(">>> 0")[0]
    assert "next steps:" in first_build and "report: edgekiln-out/report.html" in first_build
    assert "edgekiln run edgekiln-out/x86 --input " in first_build
    # The README's accuracy line is the one the build measures (x86-int8's depends on the CPU).
    report = json.loads((out / "report.json").read_text())
    for target in report["targets"]:
        top1 = (target.get("accuracy") or {}).get("top1")
        if top1 is None:
            continue
        text = " ".join(table.split())
        if target["artifact"] == "x86-int8":
            assert f"x86-int8 scores {top1:.2%} on an {report['host']['int8_isa']} CPU" in text \
                or f"and {top1:.2%} on an {report['host']['int8_isa']} CPU" in text, top1
        else:
            assert re.search(rf"\b{target['artifact']}\b[^.;]* score {top1:.2%}", text), (target["artifact"], top1)
    # The last example (a recipe) replaced out/ with the bundled example's five targets.
    recipe_report = json.loads((checkout / "out" / "report.json").read_text())
    assert [t["artifact"] for t in recipe_report["targets"]] == ["x86", "x86-int8", "rpi4", "mcu", "jetson-nano"]


def test_benchmarks_md_lists_the_other_records_that_bench_run_appends():
    """bench.run regenerates BENCHMARKS.md and appends bench/other_records.md: the two must not drift apart."""
    benchmarks = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    other = (ROOT / "bench" / "other_records.md").read_text(encoding="utf-8")
    assert benchmarks.endswith(other)
    for linked in re.findall(r"\]\((bench/[^)]+|[A-Z]+\.md)\)", other):
        assert (ROOT / linked).is_file(), linked

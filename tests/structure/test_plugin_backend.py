"""A backend from another package, registered only through the ``edgekiln.backends`` entry point (issue #16).

The plugin is a real, separately installed distribution (a ``.dist-info`` with ``entry_points.txt`` on the
path of a fresh interpreter): it runs models with ONNX's own reference evaluator, a runtime independent of
ONNX Runtime, so the compile's verification compares two different engines. No file of the project names it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx

from helpers import make_onnx_model

PLUGIN = textwrap.dedent('''
    """edgekiln backend running ONNX models with onnx.reference (a test plugin)."""
    import shutil
    from pathlib import Path

    from pydantic import Field

    from backends.base import Backend, Capabilities, CompiledFiles, Runner
    from toolchain.onnx_io import graph_inputs, graph_outputs
    from toolchain.options import OptionGroup
    from toolchain.targets import Target


    class ReferenceOptions(OptionGroup):
        onnxref_tag: str | None = Field(None, description="onnxref: a label recorded in the artifact.")


    class ReferenceRunner(Runner):
        def __init__(self, path):
            import onnx
            from onnx.reference import ReferenceEvaluator

            model = onnx.load(str(path))
            self.inputs, self.outputs = graph_inputs(model), graph_outputs(model)
            self._session = ReferenceEvaluator(model)

        def run(self, feed):
            values = self._session.run(None, feed)
            return {o.name: v for o, v in zip(self.outputs, values)}


    class ReferenceBackend(Backend):
        name = "onnxref"
        description = "onnx.reference evaluator (plugin)"
        capabilities = Capabilities(precisions=("fp32",), opset_range=(7, 21))
        required_modules = ("onnx",)
        options = ReferenceOptions
        targets = (Target("refbox", "a box that runs onnx.reference", "onnxref", "fp32", 17),)
        distributions = ("onnx",)

        def compile(self, onnx_path, options, out_dir):
            shutil.copyfile(onnx_path, Path(out_dir) / "model.onnx")
            details = {"engine": "onnx.reference", "tag": options.extra.get("onnxref_tag")}
            return CompiledFiles(model_file="model.onnx", details=details)

        def load(self, model_path, runtime_options):
            return ReferenceRunner(model_path)
''')


def _install_plugin(site: Path) -> None:
    (site / "edgekiln_onnxref.py").write_text(PLUGIN)
    dist = site / "edgekiln_onnxref-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: edgekiln-onnxref\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[edgekiln.backends]\nonnxref = edgekiln_onnxref:ReferenceBackend\n")


def _edgekiln(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "toolchain", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_a_plugin_backend_is_listed_compiled_with_and_verified(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    model = tmp_path / "model.onnx"
    onnx.save(make_onnx_model(), str(model))

    listed = _edgekiln(site, "backends", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {row["name"]: row for row in json.loads(listed.stdout)}
    assert rows["onnxref"]["available"] and rows["onnxref"]["precisions"] == ["fp32"]

    out = tmp_path / "artifact"
    compiled = _edgekiln(site, "compile", str(model), "-o", str(out), "--backend", "onnxref")
    assert compiled.returncode == 0, compiled.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "onnxref"
    assert manifest["metrics"]["details"]["engine"] == "onnx.reference"
    # Verified by running the plugin's own engine against ONNX Runtime, not skipped.
    (check,) = manifest["metrics"]["verify"]
    assert check["candidate"] == "onnxref artifact" and check["reference"] == "ONNX model in ONNX Runtime"
    assert check["passed"] and check["outputs"][0]["cosine"] > 0.9999

    # A precision the plugin does not declare is refused in one line, before anything is written.
    refused = _edgekiln(site, "compile", str(model), "-o", str(tmp_path / "fp16"), "--backend", "onnxref",
                        "--precision", "fp16")
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert not (tmp_path / "fp16").exists()


def test_without_the_plugin_the_backend_is_unknown(tmp_path):
    model = tmp_path / "model.onnx"
    onnx.save(make_onnx_model(), str(model))
    result = _edgekiln(tmp_path, "compile", str(model), "-o", str(tmp_path / "out"), "--backend", "onnxref")
    assert result.returncode != 0
    assert "unknown backend 'onnxref'" in result.stderr


def test_a_plugin_backend_gets_its_flags_target_recipe_keys_cache_keys_and_report_rows(tmp_path):
    """Declared only in the plugin: its option becomes a compile/build flag and a recipe key, its target a
    --target, its option's value part of the build's cache key, and its artifacts rows of the report."""
    site = tmp_path / "site"
    site.mkdir()
    _install_plugin(site)
    model = tmp_path / "model.onnx"
    onnx.save(make_onnx_model(), str(model))

    for command in ("compile", "build"):
        shown = _edgekiln(site, command, "--help")
        assert shown.returncode == 0 and "--onnxref-tag" in shown.stdout, (command, shown.stderr)
    targets = _edgekiln(site, "targets", "--json")
    assert {"name": "refbox", "backend": "onnxref"}.items() <= {
        k: v for t in json.loads(targets.stdout) if t["name"] == "refbox" for k, v in t.items()}.items()

    cache = tmp_path / "cache"

    def plan(*flags: str) -> dict[str, str]:
        done = _edgekiln(site, "build", str(model), "-o", str(tmp_path / "planned"), "--target", "refbox",
                         "--cache-dir", str(cache), "--dry-run", "--json", *flags)
        assert done.returncode == 0, done.stderr
        return {stage["stage"]: stage["key"] for stage in json.loads(done.stdout)}

    first, again, second = plan("--onnxref-tag", "a"), plan("--onnxref-tag", "a"), plan("--onnxref-tag", "b")
    assert first == again
    assert first["compile refbox"] != second["compile refbox"] and first["convert"] == second["convert"]

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"source: {model}\ntargets: [refbox, x86]\nonnxref-tag: from-recipe\nbench-iterations: 1\n"
                      f"cache-dir: {cache}\n")
    out = tmp_path / "built"
    built = _edgekiln(site, "build", "-c", str(recipe), "-o", str(out), "--quiet")
    assert built.returncode == 0, built.stderr
    report = json.loads((out / "report.json").read_text())
    rows = {t["artifact"]: t for t in report["targets"]}
    assert rows["refbox"]["backend"] == "onnxref" and rows["refbox"]["status"] == "ok"
    assert rows["refbox"]["latency"]["p50_ms"] > 0 and rows["refbox"]["agreement"]["min_cosine"] > 0.9999
    manifest = json.loads((out / "refbox" / "manifest.json").read_text())
    assert manifest["metrics"]["details"]["tag"] == "from-recipe"
    assert manifest["options"]["onnxref_tag"] == "from-recipe" and "onnx" in manifest["sdk"]
    # The x86 artifact (another backend) was not given the plugin's option.
    assert "onnxref_tag" not in json.loads((out / "x86" / "manifest.json").read_text())["options"]

    wrong = _edgekiln(site, "compile", str(model), "-o", str(tmp_path / "wrong"), "--onnxref-tag", "x")
    assert wrong.returncode == 2 and "applies to the onnxref backend" in wrong.stderr

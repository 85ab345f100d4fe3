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

    from backends.base import Backend, Capabilities, CompiledFiles, Runner
    from toolchain.onnx_io import graph_inputs, graph_outputs


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

        def compile(self, onnx_path, options, out_dir):
            shutil.copyfile(onnx_path, Path(out_dir) / "model.onnx")
            return CompiledFiles(model_file="model.onnx", details={"engine": "onnx.reference"})

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

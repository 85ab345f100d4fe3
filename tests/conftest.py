"""Shared fixtures: tiny real models built in the test session (no downloads, no mocks)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import onnx
import pytest

from helpers import make_onnx_model

TINY_TORCH_SOURCE = textwrap.dedent('''
    import torch

    class TinyNet(torch.nn.Module):
        """Conv + BN + ReLU + Linear: the ops every backend handles."""

        def __init__(self, channels: int = 4, classes: int = 10):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, channels, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(channels)
            self.fc = torch.nn.Linear(channels * 8 * 8, classes)

        def forward(self, x):
            return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(6, 3)
            self.b = torch.nn.Linear(4, 2)

        def forward(self, x, y):
            return self.a(x), self.b(y)
''')


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets an empty edgekiln cache (stages and calibration sets), never the user's ~/.cache;
    subprocesses inherit it through the environment."""
    folder = tmp_path_factory.mktemp("edgekiln-cache")
    monkeypatch.setenv("EDGEKILN_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(scope="session")
def torch_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny PyTorch model saved in every format edgekiln ingests, plus its class file."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("torch_models")
    source = folder / "tiny_net.py"
    source.write_text(TINY_TORCH_SOURCE)
    spec = importlib.util.spec_from_file_location("tiny_net", source)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_net"] = module  # pickling a whole model needs its class importable by module name
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    model = module.TinyNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so a folding bug would show
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    example = torch.randn(1, 1, 8, 8)
    paths = {"class_file": source, "torchscript": folder / "tiny.pt", "export": folder / "tiny.pt2",
             "state_dict": folder / "tiny_state.pth", "pickled": folder / "tiny_whole.pth"}
    torch.jit.trace(model, example).save(str(paths["torchscript"]))
    torch.export.save(torch.export.export(model, (example,)), str(paths["export"]))
    torch.save(model.state_dict(), paths["state_dict"])
    torch.save(model, paths["pickled"])
    two = module.TwoHeads().eval()
    paths["two_heads"] = folder / "two_heads.pt"
    torch.jit.script(two).save(str(paths["two_heads"]))
    return paths


@pytest.fixture
def tiny_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    onnx.save(make_onnx_model(), str(path))
    return path


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

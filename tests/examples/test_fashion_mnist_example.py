"""The bundled Fashion-MNIST example: shipped weights, samples and training record."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from PIL import Image

from toolchain.examples import fashion_mnist as fm

DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")
SAMPLES_PER_CLASS = 30


@pytest.fixture(scope="module")
def torch() -> ModuleType:
    # Skip per test rather than per module so the import-light check runs without torch too.
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def record() -> dict[str, Any]:
    return json.loads(fm.training_record_path().read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def model(torch: ModuleType, record: dict[str, Any]) -> Any:
    from toolchain.examples.fashion_mnist.model import FashionCNN

    net = FashionCNN(**record["model_kwargs"])
    net.load_state_dict(torch.load(fm.weights_path(), weights_only=True))
    return net.eval()


def sample_files() -> list[tuple[int, Path]]:
    """(label, png) for every bundled sample, in class then file-name order."""
    return [
        (label, png)
        for label, name in enumerate(fm.SAMPLE_FOLDERS)
        for png in sorted((fm.samples_dir() / name).glob("*.png"))
    ]


def load_gray01(png: Path) -> np.ndarray:
    """The ``gray01`` preset done independently of the training code: L, /255, (1, 28, 28)."""
    with Image.open(png) as img:
        return (np.asarray(img.convert("L"), dtype=np.float32) / 255.0)[None]


def test_constants_describe_the_model() -> None:
    assert fm.MODEL_CLASS == "toolchain.examples.fashion_mnist.model:FashionCNN"
    assert (fm.INPUT_NAME, fm.INPUT_SHAPE, fm.OUTPUT_NAME) == ("image", (1, 1, 28, 28), "logits")
    assert fm.PREPROCESS == {"preset": "gray01"}
    assert len(fm.CLASS_NAMES) == len(set(fm.CLASS_NAMES)) == 10
    assert all(name.replace("_", "").replace("-", "").isalnum() for name in fm.CLASS_NAMES)


def test_weights_file_is_small() -> None:
    assert fm.weights_path().stat().st_size < 1_000_000


def test_samples_are_300_gray_28x28_pngs_30_per_class() -> None:
    assert sorted(p.name for p in fm.samples_dir().iterdir()) == sorted(fm.SAMPLE_FOLDERS)
    files = sample_files()
    assert len(files) == 300
    for label in range(10):
        assert sum(1 for lab, _ in files if lab == label) == SAMPLES_PER_CLASS
    for _, png in files:
        assert png.stem.isdigit() and len(png.stem) == 5, png
        with Image.open(png) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "L", (28, 28)), png


def test_training_record(record: dict[str, Any]) -> None:
    assert record["test_accuracy"] >= 0.88
    assert record["test_images"] == 10_000 and record["train_images"] == 60_000
    assert record["weights_bytes"] == fm.weights_path().stat().st_size
    assert record["sample_images"] == 300


def test_record_matches_shipped_model(model: Any, record: dict[str, Any]) -> None:
    assert sum(p.numel() for p in model.parameters()) == record["parameter_count"]


def test_bundled_model_classifies_bundled_samples(torch: ModuleType, model: Any, record: dict[str, Any]) -> None:
    files = sample_files()
    x = torch.from_numpy(np.stack([load_gray01(png) for _, png in files]))
    labels = torch.tensor([label for label, _ in files])
    assert tuple(x.shape[1:]) == fm.INPUT_SHAPE[1:]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    with torch.inference_mode():
        logits = model(x)
    assert tuple(logits.shape) == (300, 10)
    predicted = logits.argmax(dim=1)
    accuracy = (predicted == labels).float().mean().item()
    assert accuracy >= 0.85
    # PNG is lossless, so the shipped files must reproduce what training measured on these images
    # (one image of slack for float differences across machines).
    assert abs(accuracy - record["sample_accuracy"]) <= 1 / 300 + 1e-9
    # A degenerate model could reach a high average by ignoring a class; every class must be learnt.
    for label in range(10):
        class_hits = (predicted[labels == label] == label).float().mean().item()
        assert class_hits >= 0.5, fm.CLASS_NAMES[label]


@pytest.mark.skipif(not DATASET_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_samples_are_traceable_to_the_test_set(torch: ModuleType) -> None:
    from toolchain.examples.fashion_mnist.train import load_split

    images, labels = load_split(DATASET_DIR, "t10k")
    for label, png in sample_files():
        index = int(png.stem)
        assert labels[index] == label, png
        with Image.open(png) as img:
            np.testing.assert_array_equal(np.asarray(img), images[index], err_msg=str(png))


def test_package_import_does_not_import_torch() -> None:
    code = (
        "import sys, toolchain.examples.fashion_mnist as fm; "
        "fm.weights_path(); fm.samples_dir(); fm.training_record_path(); "
        "sys.exit('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr or "importing the package imported torch"


def test_paths_point_at_shipped_files() -> None:
    assert fm.weights_path().is_file()
    assert fm.training_record_path().is_file()
    assert fm.samples_dir().is_dir()


def test_train_reports_missing_dataset_without_traceback(torch: ModuleType, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    command = [sys.executable, "-m", "toolchain.examples.fashion_mnist.train"]
    command += ["--data-dir", str(tmp_path / "missing"), "--out-dir", str(out_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "apt-get install dataset-fashion-mnist" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out_dir.exists()


def test_read_idx_rejects_a_file_that_is_not_idx(torch: ModuleType, tmp_path: Path) -> None:
    from toolchain.errors import InputFileError
    from toolchain.examples.fashion_mnist.train import read_idx

    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(InputFileError, match="not an IDX file"):
        read_idx(bad)
    truncated = tmp_path / "short-labels-idx1-ubyte.gz"
    truncated.write_bytes(gzip.compress(b"\0\0\x08\x01" + (5).to_bytes(4, "big") + b"\x01\x02"))
    with pytest.raises(InputFileError, match="truncated"):
        read_idx(truncated)


def test_read_idx_round_trip(torch: ModuleType, tmp_path: Path) -> None:
    from toolchain.examples.fashion_mnist.train import read_idx

    data = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "tiny-idx3-ubyte.gz"
    header = b"\0\0\x08\x03" + b"".join(d.to_bytes(4, "big") for d in data.shape)
    path.write_bytes(gzip.compress(header + data.tobytes()))
    np.testing.assert_array_equal(read_idx(path), data)


def test_model_exports_to_onnx_and_matches(torch: ModuleType, model: Any, tmp_path: Path) -> None:
    # The example exists to be converted; check the plain exporter path works and agrees numerically.
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    x = torch.from_numpy(np.stack([load_gray01(png) for _, png in sample_files()[::30]]))
    onnx_path = tmp_path / "fashion.onnx"
    torch.onnx.export(model, (x,), str(onnx_path), input_names=[fm.INPUT_NAME], output_names=[fm.OUTPUT_NAME])
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run([fm.OUTPUT_NAME], {fm.INPUT_NAME: x.numpy()})
    with torch.inference_mode():
        torch_logits = model(x).numpy()
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-4, atol=1e-4)


def test_sample_folders_sort_in_label_order():
    """edgekiln eval reads them as an ImageFolder: sorted folder names must give label indices."""
    from calibration.folder import labelled_folder

    _samples, class_names = labelled_folder(fm.samples_dir())
    assert class_names == list(fm.SAMPLE_FOLDERS)

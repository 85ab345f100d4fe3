"""Quantization-aware training on the bundled Fashion-MNIST CNN: real fine-tuning, real QDQ export, run in ORT."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from backends.tensorrt.qdq import qdq_problems  # noqa: E402
from toolchain.compress import fakequant  # noqa: E402
from toolchain.compress.data import load_images  # noqa: E402
from toolchain.compress.qat import api_qat  # noqa: E402
from toolchain.compress.torch_io import load_torch_module  # noqa: E402
from toolchain.errors import UsageError  # noqa: E402
from toolchain.examples import fashion_mnist as fm  # noqa: E402
from toolchain.passes.quantize import QuantizeConfig  # noqa: E402

MODEL = {"model_class": fm.MODEL_CLASS, "weights": fm.weights_path(), "inputs": ["1x1x28x28"]}
FAST = {"holdout": 60, "iterations": 3, "labels": True}
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


@pytest.fixture(scope="module")
def x86(tmp_path_factory):
    out = tmp_path_factory.mktemp("qat_x86") / "model.qdq.onnx"
    return api_qat(None, out, calib=fm.samples_dir(), target="x86", epochs=2, **MODEL, **FAST)


@pytest.fixture(scope="module")
def split():
    return load_images(fm.samples_dir(), fm.INPUT_SHAPE, holdout=60, count=None, seed=0, preprocess=None, labels=True)


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def zero_point_types(model: onnx.ModelProto, op_type: str, weights: bool) -> set[int]:
    """Zero-point dtypes of ``op_type`` nodes on weights (``weights``) or on activations."""
    inits = {t.name: t for t in model.graph.initializer}
    weight_names = {t.name for t in model.graph.initializer if len(t.dims) >= 2}
    producers = {o: n for n in model.graph.node for o in n.output}
    found = set()
    for node in model.graph.node:
        if node.op_type != op_type:
            continue
        source = node.input[0]
        if source in producers and producers[source].op_type == _Q:
            source = producers[source].input[0]
        if (source in weight_names) == weights and inits[node.input[2]].data_type != onnx.TensorProto.INT32:
            found.add(inits[node.input[2]].data_type)
    return found


def test_x86_export_is_uint8_qdq_that_ort_runs_and_matches_the_fake_quant_model(x86, split):
    model = onnx.load(str(x86.output))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count(_Q) >= 5 and ops.count(_DQ) >= 10
    assert zero_point_types(model, _Q, weights=False) == {onnx.TensorProto.UINT8}  # activations: uint8
    assert zero_point_types(model, _DQ, weights=True) == {onnx.TensorProto.INT8}  # weights: int8
    session = ort.InferenceSession(str(x86.output), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": split.held_out})[0]
    assert logits.shape == (60, 10) and np.isfinite(logits).all()
    assert x86.export_check.agreement >= 0.95 and x86.export_check.min_cosine > 0.99
    assert x86.ranges_path.exists() and json.loads(x86.ranges_path.read_text())["details"]["qat"] is True


def test_weights_are_per_output_channel_on_axis_0(x86):
    model = onnx.load(str(x86.output))
    inits = initializers(model)
    weights = [n for n in model.graph.node if n.op_type == _DQ and inits.get(n.input[0]) is not None
               and inits[n.input[0]].ndim >= 2]
    assert len(weights) == 5  # three convs, two linear layers
    for node in weights:
        scales, values = inits[node.input[1]], inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        assert axis == 0 and scales.shape == (values.shape[0],) and len(np.unique(scales)) > 1
        assert values.dtype == np.int8 and np.abs(values.astype(int)).max() <= 127  # symmetric range


def test_qat_is_not_worse_than_ptq_and_both_are_measured(x86):
    assert x86.fp32.agreement == 1.0 and x86.fp32.accuracy >= 0.9
    assert x86.qat.agreement >= x86.ptq.agreement - 0.02
    assert x86.qat.accuracy >= x86.fp32.accuracy - 0.05
    assert x86.qat.onnx_bytes < x86.fp32.onnx_bytes / 2 and x86.ptq.onnx_bytes < x86.fp32.onnx_bytes / 2
    assert x86.qat.latency_p50_ms > 0 and x86.qat.parameters == x86.fp32.parameters
    assert 1 <= len(x86.report.epochs) <= 2 and x86.scheme["activation_type"] == "uint8"


def test_qat_graph_has_the_ptq_structure(x86, tmp_path):
    """QAT writes its QDQ model with the PTQ pass itself: same nodes, same quantized tensors, new weights."""
    from toolchain import api
    from toolchain.compress.qat import export_onnx

    fp32 = export_onnx(load_torch_module(None, model_class=fm.MODEL_CLASS, weights=fm.weights_path()),
                       np.zeros(fm.INPUT_SHAPE, np.float32), tmp_path / "fp32.onnx", 17)
    api.calibrate(fp32, tmp_path / "ptq.onnx", calib=fm.samples_dir(), calib_size=64, holdout=0, no_cache=True,
                  guard=False)
    ptq, qat = onnx.load(str(tmp_path / "ptq.onnx")), onnx.load(str(x86.output))
    assert [(n.op_type, n.name) for n in ptq.graph.node] == [(n.op_type, n.name) for n in qat.graph.node]


def test_fake_quant_scales_are_the_ptq_scales(split, tmp_path):
    """The torch simulation and ORT's PTQ compute the same activation scale and zero point on the same images."""
    from toolchain import api
    from toolchain.compress.qat import export_onnx

    model = load_torch_module(None, model_class=fm.MODEL_CLASS, weights=fm.weights_path())
    for target, activation in (("x86", onnx.TensorProto.UINT8), ("jetson-orin", onnx.TensorProto.INT8)):
        scheme = fakequant.QuantScheme.from_config(QuantizeConfig.for_target(target))
        student = fakequant.fake_quant_model(model, scheme)
        fakequant.calibrate(student, split.train, scheme)
        np.save(tmp_path / "train.npy", split.train)
        fp32 = export_onnx(model, split.train[:1], tmp_path / "fp32.onnx", 17)
        api.calibrate(fp32, tmp_path / f"{target}.onnx", calib=tmp_path / "train.npy", target=target,
                      calib_size=len(split.train), holdout=0, no_cache=True, guard=False)
        ptq = onnx.load(str(tmp_path / f"{target}.onnx"))
        node = next(n for n in ptq.graph.node if n.op_type == _Q and n.input[0] == "input")
        inits = {t.name: t for t in ptq.graph.initializer}
        first_conv = fakequant.weighted_layers(student)[0][1].input_quant
        assert inits[node.input[2]].data_type == activation
        assert float(first_conv.scale) == pytest.approx(float(numpy_helper.to_array(inits[node.input[1]])), rel=1e-6)
        assert int(first_conv.zero_point) == int(numpy_helper.to_array(inits[node.input[2]]))
    assert all(not isinstance(m, fakequant._module_classes()[0]) for m in model.modules())  # original untouched


def test_tensorrt_target_via_the_command_is_symmetric_int8_in_tensorrt_form(tmp_path):
    import click
    from click.testing import CliRunner

    from toolchain.compress.train_commands import qat as qat_command

    group = click.Group()
    group.add_command(qat_command)
    out = tmp_path / "model.qdq.onnx"
    result = CliRunner().invoke(group, ["qat", str(fm.weights_path()), "--model-class", fm.MODEL_CLASS, "--input",
                                        "1x1x28x28", "--calib", str(fm.samples_dir()), "--epochs", "1", "--target",
                                        "jetson-orin", "--holdout", "60", "--iterations", "2", "--json",
                                        "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["scheme"]["activation_type"] == "int8" and data["scheme"]["activation_symmetric"] is True
    model = onnx.load(str(out))
    assert qdq_problems(model) == []  # zero points 0, int8, per-channel weights on the output-channel axis only
    inits = initializers(model)
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type in (_Q, _DQ)]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert any(inits[n.input[1]].size > 1 for n in model.graph.node if n.op_type == _Q)  # per-channel weight Qs
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})[0].shape == (2, 10)
    assert data["export_check"]["min_cosine"] > 0.99


def dequantized_weights(model: onnx.ModelProto) -> list[np.ndarray]:
    """The weights of every Conv/Gemm of a QDQ model as its DequantizeLinear nodes give them, in node order."""
    inits = initializers(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    found = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm") and node.input[1] in producers:
            dq = producers[node.input[1]]
            values, scales = inits[dq.input[0]].astype(np.float32), inits[dq.input[1]]
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            shape = [1] * values.ndim
            shape[axis] = -1
            found.append(values * scales.reshape(shape))
    return found


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quant_model_is_the_exported_model_before_fine_tuning(split, tmp_path, bits):
    """Untrained, the fake-quant model QAT fine-tunes and the QDQ ONNX it exports (same path as ``api_qat``) agree.

    The export folds BatchNorm into the convolutions and ORT quantizes the folded weights; the fake-quant
    model must quantize those same weights on the same grid, int4's -7.5 ties included.
    """
    from backends.onnxruntime.runner import OnnxRuntimeRunner
    from toolchain.compress.measure import onnx_logits, predict_logits, top1_agreement
    from toolchain.compress.qat import QatOptions, _Run, unmatched_weights

    model = load_torch_module(None, model_class=fm.MODEL_CLASS, weights=fm.weights_path())
    run = _Run(model, split, "x86", QatOptions(weight_bits=bits), tmp_path, 1)
    _ptq, ranges = run._ptq(run._export(model, "fp32.onnx"))
    student = fakequant.fake_quant_model(model, run.scheme)
    fakequant.calibrate(student, split.train, run.scheme)
    assert student.folded == [(f"features.{i}.0", f"features.{i}.1") for i in range(3)]
    tuned = run._export(fakequant.float_model(student, model), "tuned.onnx")
    assert unmatched_weights(student, tuned) == []
    qdq = run._quantize(tuned, ranges)

    exported = dequantized_weights(onnx.load(str(qdq)))
    simulated = [w for _name, w in fakequant.quantized_weights(student)]
    assert len(exported) == len(simulated) == 5
    np.testing.assert_array_equal(simulated[0], exported[0])  # the first conv: BN folded, same integers, same scales
    for ours, theirs in zip(simulated[1:], exported[1:]):
        np.testing.assert_array_equal(ours, theirs)

    torch_logits = predict_logits(student, split.held_out)
    ort_logits = onnx_logits(OnnxRuntimeRunner.from_path(qdq), split.held_out, 64)
    assert top1_agreement(ort_logits, torch_logits) >= 0.99
    assert cosines(ort_logits, torch_logits).min() >= 0.999


class _ConvBiasBN(torch.nn.Module):
    """Conv with its own bias, then BatchNorm (folded by the export), called from forward() rather than a Sequential."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


class _ConvReadTwice(_ConvBiasBN):
    """The conv output also feeds an Add: the export cannot fold the BatchNorm."""

    def forward(self, x):
        y = self.conv(x)
        return self.fc((self.bn(y) + y).mean((2, 3)))


class _SharedConv(torch.nn.Module):
    """One conv called twice, each time before another BatchNorm: the export folds both, one module cannot."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(3, 3, 3, padding=1), torch.nn.Linear(3, 4)
        self.bn1, self.bn2 = torch.nn.BatchNorm2d(3), torch.nn.BatchNorm2d(3)

    def forward(self, x):
        return self.fc(self.bn2(self.conv(torch.relu(self.bn1(self.conv(x))))).mean((2, 3)))


@pytest.mark.parametrize("module, folded", [(_ConvBiasBN, [("conv", "bn")]), (_ConvReadTwice, []),
                                            (_SharedConv, [])])
def test_batchnorm_is_folded_exactly_where_the_export_folds_it(tmp_path, module, folded):
    """Negative gammas, a conv bias, a channel whose folded bias would overflow int32 (ORT then widens its int8
    weight scale): the fake-quant weights are ORT's bit for bit, except where the export folds what one module
    cannot (a conv called twice), which ``unmatched_weights`` names."""
    from toolchain.compress.qat import export_onnx, unmatched_weights
    from toolchain.passes.quantize import compute_ranges, named_copy, quantize_static

    torch.manual_seed(0)
    model = module().eval()
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            for tensor in (bn.weight, bn.bias, bn.running_mean):
                tensor.copy_(torch.randn_like(tensor))  # about half the gammas negative
            bn.running_var.copy_(torch.rand_like(bn.running_var) + 0.1)
        model.conv.weight[0] *= 1e-8
    images = np.random.default_rng(0).standard_normal((16, 3, 10, 10)).astype(np.float32)
    config = QuantizeConfig.for_target("x86")
    for bits in (8, 4):
        scheme = fakequant.QuantScheme.from_config(config, bits)
        student = fakequant.fake_quant_model(model, scheme)
        fakequant.calibrate(student, images, scheme)
        assert student.folded == folded
        path = export_onnx(fakequant.float_model(student, model), images[:1], tmp_path / f"{bits}.onnx",
                           21 if bits == 4 else 17)
        unmatched = unmatched_weights(student, path)
        assert unmatched == (["conv"] if module is _SharedConv else [])
        exported = named_copy(onnx.load(str(path)))
        ranges = compute_ranges(exported, ({"input": image[None]} for image in images), config)
        ours = dict(fakequant.quantized_weights(student))
        theirs = dequantized_weights(quantize_static(exported, ranges, config, weight_bits=bits))
        assert np.array_equal(ours["fc"], theirs[-1])
        if not unmatched:
            np.testing.assert_array_equal(ours["conv"], theirs[0])


@pytest.mark.parametrize("change, message", [
    ({"weight_bits": 4, "target": "jetson-orin"}, "--weight-bits 4 needs an ONNX Runtime target"),
    ({"weight_bits": 2}, "--weight-bits must be 8 or 4"),
    ({"output_name": "model.pt"}, "must end in .onnx"),
    ({"target": "toaster"}, "unknown target 'toaster'"),
    ({"epochs": 0}, "--epochs must be"),
])
def test_bad_requests_are_one_line_and_fail_before_training(tmp_path, change, message):
    change = dict(change)
    out = tmp_path / change.pop("output_name", "model.qdq.onnx")
    with pytest.raises(UsageError) as caught:
        api_qat(None, out, calib=fm.samples_dir(), **MODEL, **change)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not out.exists()


def test_4_bit_weights_for_onnxruntime(tmp_path, split):
    out = tmp_path / "model.int4.onnx"
    result = api_qat(None, out, calib=fm.samples_dir(), target="x86", epochs=2, lr=1e-3, weight_bits=4, **MODEL,
                     **FAST)
    model = onnx.load(str(out))
    assert model.opset_import[0].version == 21
    int4 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4 and len(t.dims) >= 2]
    assert len(int4) == 5  # every Conv and Gemm weight
    logits = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": split.held_out})[0]
    assert logits.shape == (60, 10)
    assert result.export_check.min_cosine > 0.98 and result.export_check.agreement >= 0.95
    assert result.ptq.onnx_bytes == result.qat.onnx_bytes < 50_000  # int8 would be about 77 KB
    assert result.qat.agreement >= result.ptq.agreement - 0.02
    assert any("no int4 kernels" in note for note in result.notes)


def test_torchscript_source_and_tiny_folder_are_one_line(tmp_path):
    model = load_torch_module(None, model_class=fm.MODEL_CLASS, weights=fm.weights_path())
    scripted = tmp_path / "model.pt"
    torch.jit.trace(model, torch.zeros(fm.INPUT_SHAPE)).save(str(scripted))
    with pytest.raises(UsageError, match="needs the model as Python code"):
        api_qat(scripted, tmp_path / "a.onnx", calib=fm.samples_dir(), inputs=["1x1x28x28"], **FAST)
    folder = tmp_path / "few"
    folder.mkdir()
    for png in sorted(fm.samples_dir().rglob("*.png"))[:3]:
        shutil.copy(png, folder / png.name)
    with pytest.raises(UsageError, match="has 3 images, too few"):
        api_qat(None, tmp_path / "b.onnx", calib=folder, **MODEL)



def test_entry_point_runs_qat(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "model.qdq.onnx"
    run = subprocess.run([sys.executable, "-m", "toolchain", "qat", "--model-class", fm.MODEL_CLASS, "--weights",
                          str(fm.weights_path()), "--input", "1x1x28x28", "--calib", str(fm.samples_dir()),
                          "--epochs", "1", "--holdout", "60", "--iterations", "2", "-o", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "qat int8" in run.stdout and out.exists()
    bad = subprocess.run([sys.executable, "-m", "toolchain", "qat", "--model-class", fm.MODEL_CLASS, "--weights",
                          str(fm.weights_path()), "--input", "1x1x28x28", "--calib", str(fm.samples_dir()),
                          "--weight-bits", "4", "--target", "rpi4", "-o", str(out)], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0

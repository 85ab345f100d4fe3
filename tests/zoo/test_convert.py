"""Convert parity on real models: ``edgekiln convert`` must succeed cleanly, and its ONNX must compute what
the source framework computes on real photos (checked here independently of edgekiln's own verification)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zoo import metrics
from zoo.models import BY_KEY, EFFNET, FER, IMAGE_MODELS, SILERO, SILERO_16K, ZooModel, source_args, spec_for
from zoo.runner import run_cli

CONVERTIBLE = [m for m in (*IMAGE_MODELS, SILERO_16K)]


def _source_outputs(model: ZooModel, source: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    """The source framework's own outputs, one sample (one feed) at a time."""
    if model.file_format.startswith("ONNX"):
        runner = metrics.OnnxModel(source)
        rows = [runner.session.run(None, feed) for feed in feeds]
    elif model is FER:
        import keras

        net = keras.models.load_model(str(source), compile=False)
        rows = [[np.asarray(net(next(iter(feed.values())), training=False))] for feed in feeds]
    else:
        import torch

        if model is EFFNET:
            from zoo.effnet_lite0 import EfficientNetLite0

            net = EfficientNetLite0()
            net.load_state_dict(torch.load(source, weights_only=True))
        else:
            net = torch.jit.load(str(source), map_location="cpu")
        net.eval()
        with torch.no_grad():
            rows = []
            for feed in feeds:
                out = net(*(torch.from_numpy(v) for v in feed.values()))
                rows.append([t.numpy() for t in (out if isinstance(out, tuple) else (out,))])
    return [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]


def _audio_feeds(count: int) -> list[dict[str, np.ndarray]]:
    """Tones and noise at speech-like levels (no installed package ships recorded speech), 16 kHz."""
    rng = np.random.default_rng(0)
    t = np.arange(576) / 16000
    feeds = []
    for i in range(count):
        x = 0.1 * np.sin(2 * np.pi * (120 + 40 * i) * t) * (1 + np.sin(2 * np.pi * 3 * t))
        x += 0.01 * rng.standard_normal(576)
        feeds.append({"x": x[None].astype(np.float32),
                      "state": (0.1 * rng.standard_normal((2, 1, 128))).astype(np.float32)})
    return feeds


@pytest.fixture(scope="session")
def converted(zoo):
    done: dict[str, tuple[Path, Any]] = {}

    def convert(model: ZooModel) -> tuple[Path, Any]:
        if model.key not in done:
            source = zoo.source(model)
            output = zoo.root / "converted" / f"{model.key}.onnx"
            output.parent.mkdir(parents=True, exist_ok=True)
            result = run_cli(["convert", *source_args(model, source), "-o", str(output)], zoo.root)
            done[model.key] = (output, result)
        return done[model.key]

    return convert


@pytest.mark.parametrize("key", [m.key for m in CONVERTIBLE])
def test_convert_matches_source_framework_on_real_inputs(zoo, converted, key):
    model = BY_KEY[key]
    output, result = converted(model)
    assert result.returncode == 0 and not result.problems(), result.describe()
    assert output.is_file()
    onnx_model = metrics.OnnxModel(output)
    if model.preprocess is not None:
        images = metrics.preprocess(spec_for(model), zoo.heldout_files())
        feeds = [{onnx_model.input_names[0]: image[None]} for image in images]
    else:
        feeds = _audio_feeds(16)
    ours = [np.concatenate(outputs) for outputs in zip(*(onnx_model.session.run(None, f) for f in feeds))]
    theirs = _source_outputs(model, zoo.source(model), feeds)
    assert len(ours) == len(theirs)
    numbers = {}
    for name, a, b in zip(onnx_model.output_names, theirs, ours):
        diff = metrics.compare_output(name, a, b.reshape(a.shape))
        scale = max(1.0, float(np.abs(a).max()))
        numbers[name] = {"max_abs": diff.max_abs, "cosine_min": diff.cosine_min, "samples": len(a)}
        assert diff.finite and diff.cosine_min > 0.99999 and diff.max_abs <= 1e-3 * scale, (name, diff)
    if model.task == "classify":
        agreement = metrics.class_agreement(theirs[0], ours[0])
        assert agreement.agreement == 1.0, agreement
    zoo.record(key, "convert parity", {"seconds": round(result.seconds, 1), **numbers})


def test_torchscript_int_argument_fails_with_its_real_cause(zoo):
    """Silero VAD's forward takes (x: Tensor, sr: int): edgekiln cannot give an int, so conversion fails; the
    one-line error must say why (the TorchScript interpreter's own reason), not only with --debug."""
    source = zoo.source(SILERO)
    missing = run_cli(["convert", str(source), "--input", "x:1x512", "-o", str(zoo.root / "vad.onnx")], zoo.root)
    assert missing.returncode != 0 and not missing.problems(), missing.describe()
    assert "sr" in missing.error
    as_tensor = run_cli(["convert", str(source), "--input", "x:1x512", "--input", "sr:1:int64",
                         "-o", str(zoo.root / "vad.onnx")], zoo.root)
    zoo.record(SILERO.key, "convert", {"without sr": missing.error, "sr as int64 tensor": as_tensor.error})
    assert as_tensor.returncode != 0
    # problems() flags the interpreter's bare "The following operation failed ..." without its reason.
    assert not as_tensor.problems(), as_tensor.describe()
    assert not (zoo.root / "vad.onnx").exists()


def test_inspect_on_a_torchscript_file_says_what_it_is(zoo):
    """Issue #14: 'inspect' on a .pt said "not a valid ONNX model". It should describe the file, or say in one
    line that it reads ONNX/TFLite and how to get there (convert), not call a TorchScript file broken ONNX."""
    result = run_cli(["inspect", str(zoo.source(SILERO_16K))], zoo.root)
    zoo.record(SILERO_16K.key, "inspect", {"exit": result.returncode, "error": result.error})
    assert not result.problems(), result.describe()
    assert result.returncode == 0 or "not a valid ONNX" not in (result.error or ""), result.error

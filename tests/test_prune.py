"""``edgekiln prune``: real torch-pruning, real distillation, real ONNX Runtime, on the bundled example.

The bundled Fashion-MNIST CNN and its 300 labelled sample images are the data: 128 held out,
172 to recover on. Latency is timed with few iterations here; the numbers are not asserted.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from toolchain.compress.data import load_images  # noqa: E402
from toolchain.compress.prune import PruneOptions, api_prune, prune_module, save_pruned  # noqa: E402
from toolchain.errors import UsageError  # noqa: E402
from toolchain.examples.fashion_mnist.model import FashionCNN  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "toolchain" / "examples" / "fashion_mnist"
SAMPLES = EXAMPLE / "samples"
WEIGHTS = EXAMPLE / "weights.pth"
MODEL_CLASS = "toolchain.examples.fashion_mnist.model:FashionCNN"
SOURCE_FLAGS = ["--model-class", MODEL_CLASS, "--weights", str(WEIGHTS), "--input", "1x1x28x28"]
CONVS = ("features.0.0", "features.1.0", "features.2.0")
FAST = dict(latency_iterations=3)

UNTRACEABLE = textwrap.dedent('''
    import torch

    class Branchy(torch.nn.Module):
        """Takes a different layer depending on the input's values: a trace freezes one branch."""

        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.b = torch.nn.Conv2d(1, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4 * 28 * 28, 10)

        def forward(self, x):
            y = self.a(x) if x.mean() > 0 else self.b(x)
            return self.fc(y.flatten(1))
''')


@pytest.fixture(scope="module")
def teacher():
    model = FashionCNN()
    model.load_state_dict(torch.load(str(WEIGHTS), weights_only=True))
    return model.eval()


@pytest.fixture(scope="module")
def example():
    return torch.from_numpy(np.random.default_rng(0).standard_normal((1, 1, 28, 28)).astype(np.float32))


@pytest.fixture(scope="module")
def images():
    return load_images(SAMPLES, (1, 1, 28, 28), holdout=128, count=None, seed=0, preprocess=None, labels=False)


@pytest.fixture(scope="module")
def half(teacher, example, images):
    """The example pruned once at ratio 0.5, without recovery (shared by several tests)."""
    return prune_module(teacher, example, PruneOptions(0.5, recover_epochs=0, **FAST), data=images)


def _out_channels(module) -> dict[str, int]:
    named = dict(module.named_modules())
    return {name: named[name].out_channels for name in CONVS}


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_images_split_into_training_and_held_out_with_labels():
    split = load_images(SAMPLES, (1, 1, 28, 28), holdout=128, count=None, seed=0, preprocess=None, labels=True)
    assert split.train.shape == (172, 1, 28, 28) and split.held_out.shape == (128, 1, 28, 28)
    assert len(split.class_names) == 10 and split.train_labels.shape == (172,)
    assert set(np.unique(split.held_out_labels)) <= set(range(10))
    assert 0.0 <= split.train.min() and split.train.max() <= 1.0


def test_structured_pruning_removes_half_the_channels(teacher, example, half):
    pruned, report = half
    assert _out_channels(teacher) == {"features.0.0": 16, "features.1.0": 32, "features.2.0": 64}  # untouched
    assert _out_channels(pruned) == {"features.0.0": 8, "features.1.0": 16, "features.2.0": 32}
    assert dict(pruned.named_modules())["classifier.1"].out_features == 32
    assert report.protected == ["classifier.4"]  # the classifier keeps its 10 classes
    assert pruned(example).shape == teacher(example).shape == (1, 10)
    # Halving both the inputs and outputs of a layer leaves about a quarter of its weights.
    assert 0.2 < report.after_pruning.parameters / report.before.parameters < 0.3
    assert report.after_pruning.macs < 0.35 * report.before.macs
    assert report.after_pruning.onnx_bytes < 0.35 * report.before.onnx_bytes
    assert report.before.agreement == 1.0 and 0.0 <= report.after_pruning.agreement < 1.0
    assert report.channels["features.1.0"] == (32, 16) and report.after_recovery is None


def test_saved_pruned_model_converts_like_any_torchscript(half, example, tmp_path):
    from toolchain import api

    saved = save_pruned(half[0], example, tmp_path / "pruned.pt")
    loaded = torch.jit.load(str(saved))
    assert torch.allclose(loaded(example), half[0](example), atol=1e-5)
    result = api.convert(saved, tmp_path / "pruned.onnx", inputs=["input:1x1x28x28"])
    assert result.output.is_file() and [o.shape for o in result.outputs] == [(1, 10)]


def test_keep_protects_a_layer(teacher, example):
    pruned, report = prune_module(teacher, example, PruneOptions(0.5, keep=("features.0.0",), recover_epochs=0,
                                                                 **FAST), data=None)
    assert _out_channels(pruned) == {"features.0.0": 16, "features.1.0": 16, "features.2.0": 32}
    assert report.protected == ["features.0.0", "classifier.4"]
    assert report.before.agreement is None  # no images: size and speed only


def test_iterative_steps_reach_the_ratio(teacher, example, images, half):
    pruned, report = prune_module(teacher, example, PruneOptions(0.5, steps=3, recover_epochs=0, **FAST),
                                  data=images)
    assert _out_channels(pruned) == _out_channels(half[0])
    counts = [record.measure.parameters for record in report.steps]
    assert [r.stage for r in report.steps] == ["pruned"] * 3 and counts == sorted(counts, reverse=True)
    assert counts[0] < report.before.parameters and counts[-1] == half[1].after_pruning.parameters
    assert [round(r.target_ratio, 3) for r in report.steps] == [0.167, 0.333, 0.5]


def test_taylor_importance_scores_from_unlabelled_images(teacher, example, images):
    pruned, _ = prune_module(teacher, example, PruneOptions(0.5, importance="taylor", recover_epochs=0, **FAST),
                             data=images)
    assert _out_channels(pruned)["features.1.0"] == 16
    assert all(p.grad is None for p in pruned.parameters())  # no gradients left for the caller's optimiser


def test_unstructured_zeroes_weights_keeps_shapes_and_warns(teacher, example, images, caplog):
    with caplog.at_level(logging.WARNING, logger="edgekiln.compress"):
        pruned, report = prune_module(teacher, example, PruneOptions(0.5, unstructured=True, recover_epochs=0,
                                                                     **FAST), data=images)
    assert _out_channels(pruned) == _out_channels(teacher)
    assert report.after_pruning.parameters == report.before.parameters
    assert 0.45 < 1 - report.after_pruning.nonzero_parameters / report.before.parameters < 0.55
    assert report.sparsity["features.1.0"] == pytest.approx(0.5, abs=0.01) and report.sparsity["classifier.4"] == 0
    assert not hasattr(dict(pruned.named_modules())["features.1.0"], "weight_mask")  # masks made permanent
    assert any("no faster" in w for w in report.warnings) and "no faster" in caplog.text


def test_recovery_by_distillation_raises_agreement(teacher, example, images):
    pruned, report = prune_module(teacher, example, PruneOptions(0.5, recover_epochs=2, **FAST), data=images)
    assert [r.stage for r in report.steps] == ["pruned", "recovered"]
    assert report.after_recovery.agreement > report.after_pruning.agreement + 0.05
    assert report.after_recovery.parameters == report.after_pruning.parameters
    assert report.steps[1].distill.agreement_after == pytest.approx(report.after_recovery.agreement, abs=0.02)


@pytest.mark.parametrize("ratio", [0, 1.5])
def test_ratio_outside_zero_one_is_refused(ratio, tmp_path):
    with pytest.raises(UsageError) as caught:
        api_prune(None, tmp_path / "p.pt", ratio=ratio, model_class=MODEL_CLASS, weights=WEIGHTS,
                  inputs=["1x1x28x28"], calib=SAMPLES)
    assert "--ratio must be between 0 and 1" in _one_line(caught)


def test_unknown_keep_name_suggests_close_ones(teacher, example):
    with pytest.raises(UsageError) as caught:
        prune_module(teacher, example, PruneOptions(0.5, keep=("clasifier.4",), recover_epochs=0), data=None)
    assert "'classifier.4'" in _one_line(caught) and "no layer" in str(caught.value)


def test_folder_too_small_for_the_held_out_split(tmp_path):
    with pytest.raises(UsageError) as caught:
        api_prune(None, tmp_path / "p.pt", ratio=0.5, model_class=MODEL_CLASS, weights=WEIGHTS,
                  inputs=["1x1x28x28"], calib=SAMPLES / "1_trouser", holdout=128, no_cache=True)
    assert "too few for 128 held-out images" in _one_line(caught)


def test_untraceable_model_is_refused_before_pruning(tmp_path):
    source = tmp_path / "branchy.py"
    source.write_text(UNTRACEABLE)
    from toolchain.frontends.torch_frontend import import_model_class

    model = import_model_class(f"{source}:Branchy")()
    torch.save(model.state_dict(), str(tmp_path / "branchy.pth"))
    with pytest.raises(UsageError) as caught:
        api_prune(None, tmp_path / "p.pt", ratio=0.5, model_class=f"{source}:Branchy",
                  weights=tmp_path / "branchy.pth", inputs=["1x1x28x28"], calib=SAMPLES, no_cache=True)
    assert "cannot be traced" in _one_line(caught)
    assert not (tmp_path / "p.pt").exists()


FIXED_BATCH = textwrap.dedent('''
    import torch

    class FixedBatch(torch.nn.Module):
        """Reads the batch size as a Python int: a trace bakes in the example's batch of 1."""

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(28 * 28, 10)

        def forward(self, x):
            return self.fc(x.reshape(int(x.shape[0]), -1))
''')


def test_trace_that_fixes_the_batch_size_is_refused_before_pruning(tmp_path):
    source = tmp_path / "fixed_batch.py"
    source.write_text(FIXED_BATCH)
    from toolchain.frontends.torch_frontend import import_model_class

    torch.save(import_model_class(f"{source}:FixedBatch")().state_dict(), str(tmp_path / "fixed.pth"))
    with pytest.raises(UsageError) as caught:
        api_prune(None, tmp_path / "p.pt", ratio=0.5, model_class=f"{source}:FixedBatch",
                  weights=tmp_path / "fixed.pth", inputs=["1x1x28x28"], calib=SAMPLES, no_cache=True)
    assert "cannot be traced faithfully" in _one_line(caught) and "batch of 4" in str(caught.value)
    assert not (tmp_path / "p.pt").exists()


def test_state_dict_output_is_refused_with_the_reason(tmp_path):
    with pytest.raises(UsageError) as caught:
        api_prune(None, tmp_path / "p.pth", ratio=0.5, model_class=MODEL_CLASS, weights=WEIGHTS,
                  inputs=["1x1x28x28"], calib=SAMPLES)
    assert "cannot be saved as a state dict" in _one_line(caught)


def test_command_prints_the_stages_with_accuracy(tmp_path):
    import click
    from click.testing import CliRunner

    from toolchain.compress.prune_command import prune

    group = click.Group(commands=[prune])
    out = tmp_path / "pruned.pt2"
    result = CliRunner().invoke(group, ["prune", *SOURCE_FLAGS, "--ratio", "0.5", "--labels", str(SAMPLES),
                                        "--recover-epochs", "1", "--iterations", "3", "--no-cache", "--holdout", "128",
                                        "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "step 1: recovered" in result.output and "features.2.0 │ 64 -> 32" in result.output
    assert "93.75%" in result.output  # the original's accuracy on the 128 held-out images
    program = torch.export.load(str(out))
    assert program.module()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_entry_point_prunes_and_reports_bad_input_in_one_line(tmp_path):
    command = [sys.executable, "-m", "toolchain", "prune", *SOURCE_FLAGS, "--calib", str(SAMPLES), "--no-cache"]
    done = subprocess.run([*command, "--ratio", "0.5", "--recover-epochs", "1", "--iterations", "3",
                           "-o", str(tmp_path / "p.pt")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "step 1: recovered" in done.stdout and (tmp_path / "p.pt").is_file()
    assert "step 1/1: pruned to 50%" in done.stderr  # progress lines go to stderr
    failed = subprocess.run([*command, "--ratio", "1.5", "-o", str(tmp_path / "q.pt")], capture_output=True,
                            text=True, timeout=120)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr.startswith("error: --ratio must be between 0 and 1") and failed.stderr.count("\n") == 1


def test_python_api_mirrors_the_command_and_its_output_feeds_build(tmp_path):
    from toolchain import api
    from toolchain.examples import fashion_mnist as example_package

    result = api.prune(None, tmp_path / "pruned.pt", ratio=0.5, model_class=example_package.MODEL_CLASS,
                       weights=example_package.weights_path(), inputs=["1x1x28x28"],
                       calib=example_package.samples_dir(), recover_epochs=0, holdout=64)
    assert result.report.after_pruning.parameters < 0.5 * result.report.before.parameters
    built = api.build(tmp_path / "pruned.pt", tmp_path / "build", targets=["x86"], inputs=["input:1x1x28x28"],
                      bench_iterations=0, labels=example_package.samples_dir(), preprocess="gray01",
                      cache_dir=tmp_path / "cache")
    assert built.targets[0]["accuracy"]["images"] == 300


def test_round_to_keeps_channel_counts_kernel_friendly(teacher, example, images):
    """At 30%, 16/32/64 channels would become 12/23/45; --round-to 8 keeps multiples of 8 instead."""
    plain, _ = prune_module(teacher, example, PruneOptions(0.3, recover_epochs=0, **FAST), data=images)
    rounded, _ = prune_module(teacher, example, PruneOptions(0.3, recover_epochs=0, round_to=8, **FAST), data=images)
    assert any(count % 8 for count in _out_channels(plain).values())
    assert all(count % 8 == 0 for count in _out_channels(rounded).values())
    with pytest.raises(UsageError, match="--round-to"):
        PruneOptions(0.3, round_to=8, unstructured=True).validate()

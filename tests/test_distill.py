"""Knowledge distillation on the bundled Fashion-MNIST CNN and its 300 real images (real training steps)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from toolchain.compress.data import load_images  # noqa: E402
from toolchain.compress.distill import DistillOptions, api_distill, distill  # noqa: E402
from toolchain.compress.measure import predict_logits, top1_agreement  # noqa: E402
from toolchain.compress.torch_io import build_module, load_torch_module  # noqa: E402
from toolchain.errors import UsageError  # noqa: E402
from toolchain.examples import fashion_mnist as fm  # noqa: E402

# Fast settings that still learn: 240 training images, 4 epochs of batch 16, a few seconds.
FAST = DistillOptions(epochs=4, lr=1e-2, batch_size=16, patience=4, seed=0)
SMALL = {"width": 4, "dropout": 0.0}


@pytest.fixture(scope="module")
def split():
    return load_images(fm.samples_dir(), fm.INPUT_SHAPE, holdout=60, count=None, seed=0, preprocess=None, labels=True)


@pytest.fixture(scope="module")
def teacher():
    return load_torch_module(None, model_class=fm.MODEL_CLASS, weights=fm.weights_path())


def fresh_student(seed: int = 0):
    torch.manual_seed(seed)
    return build_module(fm.MODEL_CLASS, model_kwargs=SMALL)


def test_distillation_raises_a_fresh_students_agreement(split, teacher):
    student = fresh_student()
    seen = []
    report = distill(teacher, student, split.train, split.held_out, FAST, held_out_labels=split.held_out_labels,
                     progress=seen.append)
    assert report.agreement_before < 0.25  # an untrained 10-class student is near chance
    assert report.agreement_after >= report.agreement_before + 0.25
    assert [r.epoch for r in seen] == [1, 2, 3, 4] and seen == report.epochs
    assert all(r.accuracy is not None and r.seconds > 0 for r in seen)
    # The student hands back its best epoch's weights.
    kept = top1_agreement(predict_logits(student, split.held_out), predict_logits(teacher, split.held_out))
    assert kept == pytest.approx(report.agreement_after)
    assert report.agreement_after == max(r.agreement for r in report.epochs)
    assert not student.training


def test_same_seed_same_run_and_the_global_rng_is_left_alone(split, teacher):
    runs = []
    for _ in range(2):
        student = fresh_student()
        torch.manual_seed(123)
        report = distill(teacher, student, split.train, split.held_out, FAST)
        runs.append((report, student.state_dict(), torch.rand(1).item()))
    (first, weights_a, after_a), (second, weights_b, after_b) = runs
    assert [r.loss for r in first.epochs] == [r.loss for r in second.epochs]
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    assert after_a == after_b  # fork_rng: distill did not reseed the caller's generator
    other = distill(teacher, fresh_student(), split.train, split.held_out, replace(FAST, seed=1))
    assert [r.loss for r in other.epochs] != [r.loss for r in first.epochs]


def test_early_stopping_keeps_the_starting_weights_when_nothing_improves(split, teacher):
    student = fresh_student()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    # A learning rate this small cannot change a single prediction: no epoch beats epoch 0.
    report = distill(teacher, student, split.train, split.held_out,
                     DistillOptions(epochs=6, lr=1e-12, batch_size=64, patience=1))
    assert report.stopped_early and len(report.epochs) == 2
    assert report.best_epoch == 0 and report.agreement_after == report.agreement_before
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_hard_labels_are_mixed_in(split, teacher):
    losses = {}
    for weight in (0.0, 1.0):
        report = distill(teacher, fresh_student(), split.train, split.held_out,
                         DistillOptions(epochs=1, lr=1e-2, batch_size=16, hard_label_weight=weight),
                         labels=split.train_labels, held_out_labels=split.held_out_labels)
        losses[weight] = report.epochs[0].loss
    # Weight 1 is plain cross-entropy: about ln(10) = 2.3 for a fresh 10-class model, falling within an epoch;
    # weight 0 is the temperature-scaled KL term alone, a different number.
    assert 0.5 < losses[1.0] < 2.5
    assert losses[0.0] != pytest.approx(losses[1.0], rel=0.05)
    with pytest.raises(UsageError, match="15 training labels for 240"):
        distill(teacher, fresh_student(), split.train, split.held_out, FAST, labels=split.train_labels[:15])


def test_mismatched_output_shapes_are_one_line(split, teacher):
    torch.manual_seed(0)
    student = build_module(fm.MODEL_CLASS, model_kwargs={**SMALL, "num_classes": 7})
    with pytest.raises(UsageError) as caught:
        distill(teacher, student, split.train, split.held_out, FAST)
    assert "differ in shape: (1, 10) vs (1, 7)" in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("field, value, message", [
    ("epochs", 0, "--epochs"), ("temperature", 0.0, "--temperature"), ("hard_label_weight", 1.5, "between 0 and 1"),
    ("lr", -1.0, "--lr"), ("batch_size", 0, "--batch-size"), ("patience", -1, "--patience")])
def test_bad_options_are_plain_sentences(field, value, message):
    with pytest.raises(UsageError, match=message):
        DistillOptions(**{field: value}).check()


# --- api_distill / the command -------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory, teacher) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.jit.trace(teacher, torch.zeros(fm.INPUT_SHAPE)).save(str(path))
    return path


def test_api_distill_trains_measures_and_saves_a_checked_torchscript(tmp_path, teacher_file):
    out = tmp_path / "student.pt"
    result = api_distill(teacher_file, fm.MODEL_CLASS, out, images=fm.samples_dir(), labels=True,
                         student_kwargs=SMALL, inputs=["1x1x28x28"], epochs=3, lr=1e-2, batch_size=16, holdout=60,
                         iterations=5)
    assert result.report.agreement_after > result.report.agreement_before
    assert result.teacher.agreement == 1.0 and result.teacher.accuracy >= 0.9
    assert result.student.parameters < result.teacher.parameters / 10
    assert result.teacher.macs > result.student.macs > 0  # MACs of a TorchScript teacher too
    assert result.student.onnx_bytes < result.teacher.onnx_bytes / 5
    assert result.student.agreement == pytest.approx(result.report.agreement_after)
    loaded = torch.jit.load(str(out))
    assert loaded(torch.zeros(3, 1, 28, 28)).shape == (3, 10)  # traced without baking in the batch size
    assert not list(tmp_path.glob(".*.tmp"))


def test_state_dict_and_export_outputs(tmp_path, teacher_file):
    for name in ("student.pth", "student.pt2"):
        api_distill(teacher_file, fm.MODEL_CLASS, tmp_path / name, images=fm.samples_dir(), student_kwargs=SMALL,
                    inputs=["1x1x28x28"], epochs=1, holdout=60, iterations=2)
    reloaded = load_torch_module(None, model_class=fm.MODEL_CLASS, weights=tmp_path / "student.pth",
                                 model_kwargs=SMALL)  # the form 'edgekiln qat --model-class' reads
    program = torch.export.load(str(tmp_path / "student.pt2"))
    example = torch.rand(1, 1, 28, 28)
    assert torch.allclose(program.module()(example), reloaded(example), atol=1e-5)
    with pytest.raises(UsageError, match="torch.export program"):
        load_torch_module(tmp_path / "student.pt2")


def test_tiny_folder_is_one_line(tmp_path, teacher_file):
    folder = tmp_path / "few"
    folder.mkdir()
    for png in sorted(fm.samples_dir().rglob("*.png"))[:5]:
        shutil.copy(png, folder / png.name)
    with pytest.raises(UsageError) as caught:
        api_distill(teacher_file, fm.MODEL_CLASS, tmp_path / "s.pt", images=folder, student_kwargs=SMALL,
                    inputs=["1x1x28x28"], holdout=128)
    assert "has 5 images, too few" in str(caught.value) and "\n" not in str(caught.value)


UNTRACEABLE = textwrap.dedent('''
    import torch

    class BatchScaled(torch.nn.Module):
        """Scales by a Python float read from the input: a trace freezes it to the example's value."""

        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(28 * 28, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float(x.abs().sum())
''')


def test_untraceable_student_is_refused_before_training(tmp_path, teacher_file):
    source = tmp_path / "untraceable_student.py"
    source.write_text(UNTRACEABLE)
    with pytest.raises(UsageError) as caught:
        api_distill(teacher_file, f"{source}:BatchScaled", tmp_path / "s.pt", images=fm.samples_dir(),
                    inputs=["1x1x28x28"], holdout=60, epochs=50)
    message = str(caught.value)
    assert "cannot be saved as TorchScript" in message and "differs from eager" in message and "\n" not in message
    assert not (tmp_path / "s.pt").exists()


def test_mismatched_student_via_the_command(tmp_path, teacher_file):
    import click
    from click.testing import CliRunner

    from toolchain.compress.train_commands import distill as distill_command

    group = click.Group()
    group.add_command(distill_command)
    args = ["distill", "--teacher", str(teacher_file), "--student-class", fm.MODEL_CLASS, "--images",
            str(fm.samples_dir()), "--input", "1x1x28x28", "--holdout", "60", "-o", str(tmp_path / "s.pt")]
    result = CliRunner().invoke(group, [*args, "--student-kwargs", '{"width": 4, "num_classes": 5}'])
    assert isinstance(result.exception, UsageError) and "differ in shape" in str(result.exception)
    result = CliRunner().invoke(group, [*args, "--student-kwargs", '{"width": 4}', "--epochs", "2", "--lr", "0.01",
                                        "--batch-size", "16", "--labels", "--iterations", "2"])
    assert result.exit_code == 0, result.output
    assert "teacher vs student" in result.output and "agreement" in result.output
    assert (tmp_path / "s.pt").exists()



def test_entry_point_reports_bad_input_in_one_line(tmp_path, teacher_file):
    run = subprocess.run([sys.executable, "-m", "toolchain", "distill", "--teacher", str(teacher_file),
                          "--student-class", fm.MODEL_CLASS, "--student-kwargs", '{"num_classes": 3}',
                          "--images", str(fm.samples_dir()), "--input", "1x1x28x28", "--holdout", "60",
                          "-o", str(tmp_path / "s.pt")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stderr.strip().count("\n") == 0 and "differ in shape" in run.stderr

"""The ``edgekiln prune`` command (registered in ``toolchain.cli``): a thin layer over ``api_prune``.

Only click is imported here; torch and the pruning code load when the command runs.
"""

from __future__ import annotations

from pathlib import Path

import click

from toolchain.json_output import echo_json, json_flag

_path = click.Path(path_type=Path)


@click.command(name="prune")
@click.argument("source", required=False, type=_path)
@click.option("-o", "--output", type=_path, required=True,
              help="Pruned model to write: .pt (TorchScript) or .pt2 (torch.export); both feed 'edgekiln build'.")
@click.option("--ratio", type=float, required=True, help="Share of each layer's channels to remove, in (0, 1).")
@click.option("--importance", type=click.Choice(["l1", "bn", "taylor"]), default="l1", show_default=True,
              help="Channel score: weight L1 norm, BatchNorm scale, or Taylor (weight x gradient on --calib images).")
@click.option("--steps", type=int, default=1, show_default=True,
              help="Reach --ratio in this many increments, recovering after each.")
@click.option("--keep", multiple=True, metavar="NAME",
              help="Module never pruned, e.g. classifier.1 (repeatable); the final layer is always kept.")
@click.option("--unstructured", is_flag=True,
              help="Zero single weights (L1) instead of removing channels: smaller only when compressed, not faster.")
@click.option("--round-to", type=int, default=None, metavar="N",
              help="Keep channel counts a multiple of N (8 or 16 suit CPU kernels; odd counts run slower).")
@click.option("--calib", type=_path, default=None, help="Folder of images (unlabelled) to recover and measure on.")
@click.option("--labels", type=_path, default=None,
              help="Labelled folder (one sub-folder per class) used instead of --calib: adds hard labels and accuracy.")
@click.option("--recover-epochs", type=int, default=3, show_default=True,
              help="Epochs of distillation from the original after each step (0: no recovery).")
@click.option("--holdout", type=int, default=None,
              help="Images set aside (never trained on) to measure agreement or accuracy "
                   "(default: 40% of the folder, 16 to 128, at most half).")
@click.option("--train-size", type=int, default=None, help="Most training images to use (default: all the rest).")
@click.option("--input", "inputs", multiple=True, metavar="[NAME:]SHAPE", help="Input shape, e.g. 1x3x224x224.")
@click.option("--model-class", default=None, metavar="MODULE:CLASS",
              help="Architecture for a state dict: package.module:Class or path/to/file.py:Class.")
@click.option("--weights", type=_path, default=None, help="State-dict file for --model-class.")
@click.option("--model-kwargs", default=None, metavar="JSON", help="Constructor keyword arguments for --model-class.")
@click.option("--trust-pickle", is_flag=True, help="Allow unpickling a whole model object (runs code from the file).")
@click.option("--preprocess", default=None, metavar="PRESET",
              help="Image preprocessing preset (imagenet, yolo, raw01, raw255, gray01); default: from the input shape.")
@click.option("--iterations", type=int, default=50, show_default=True, help="Timed ONNX Runtime runs per measurement.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the split, Taylor batches and training.")
@click.option("--cache-dir", type=_path, default=None, help="edgekiln's cache folder (preprocessed image sets).")
@click.option("--no-cache", is_flag=True, help="Do not read or write the preprocessed-image cache.")
@json_flag
def prune(source: Path | None, output: Path, ratio: float, importance: str, steps: int, keep: tuple[str, ...],
          unstructured: bool, round_to: int | None, calib: Path | None, labels: Path | None, recover_epochs: int,
          holdout: int | None,
          train_size: int | None, inputs: tuple[str, ...], model_class: str | None, weights: Path | None,
          model_kwargs: str | None, trust_pickle: bool, preprocess: str | None, iterations: int, seed: int,
          cache_dir: Path | None, no_cache: bool, as_json: bool) -> None:
    """Prune a PyTorch model's channels, recover it by distillation, and measure every step after export.

    \b
    Example (the bundled Fashion-MNIST CNN):
      edgekiln prune --model-class toolchain.examples.fashion_mnist.model:FashionCNN \\
          --weights weights.pth --input 1x1x28x28 --ratio 0.5 --calib samples/ -o pruned.pt
    """
    from toolchain.compress.prune import api_prune

    result = api_prune(source, output, ratio=ratio, importance=importance, steps=steps, keep=keep,
                       unstructured=unstructured, round_to=round_to, calib=calib, labels=labels,
                       recover_epochs=recover_epochs,
                       model_class=model_class, weights=weights, model_kwargs=model_kwargs, trust_pickle=trust_pickle,
                       inputs=inputs, preprocess=preprocess, holdout=holdout, train_count=train_size, seed=seed,
                       latency_iterations=iterations, cache_dir=cache_dir, no_cache=no_cache)
    if as_json:
        echo_json(result)
        return
    print_prune_report(result)


def print_prune_report(result) -> None:
    """The stages table, the channels per layer, warnings and notes."""
    from toolchain.report import print_table, say

    report = result.report
    sparse = report.mode == "unstructured"  # only then do non-zero weights differ from parameters
    rows = [_row("original", report.before, sparse)]
    for record in report.steps:
        label = (f"step {record.step}: pruned to {record.target_ratio:.0%}" if record.stage == "pruned"
                 else f"step {record.step}: recovered")
        rows.append(_row(label, record.measure, sparse))
    columns = ["stage", "parameters", *(["non-zero"] if sparse else []), "MACs", "KiB (ONNX)", "p50 ms", "p90 ms",
               "accuracy", "agreement"]
    print_table(f"prune ({report.mode}, {report.importance}) -> {result.output}  [{result.data_summary}]",
                columns, rows)
    changed = [(name, f"{before} -> {after}") for name, (before, after) in report.channels.items() if before != after]
    if changed:
        print_table("channels removed", ["layer", "output channels"], changed)
    say(f"  protected: {', '.join(report.protected) or 'none'}")
    for warning in report.warnings:
        say(f"  warning: {warning}")
    for note in report.notes:
        say(f"  note: {note}")
    say(f"saved {result.output} ({result.seconds:.1f} s)")


def _row(label: str, measure, sparse: bool) -> tuple:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.2%}"

    nonzero = [f"{measure.nonzero_parameters or 0:,}"] if sparse else []
    return (label, f"{measure.parameters:,}", *nonzero, f"{measure.macs:,}", f"{measure.onnx_bytes / 1024:.1f}",
            f"{measure.latency_p50_ms:.3f}", f"{measure.latency_p90_ms:.3f}", share(measure.accuracy),
            share(measure.agreement))

"""The ``edgekiln`` command line: thin Click commands over ``toolchain.api``.

Start-up stays light: only click and the standard library are imported here;
each command imports what it needs when it runs. User errors (``ToolchainError``)
are printed as one line with the error's exit code; tracebacks only with --debug.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from toolchain import __version__
from toolchain.cli_options import GeneratedCommand, option_for, options_for
from toolchain.json_output import echo_json, json_flag, json_requested, wants_json

_existing_path = click.Path(path_type=Path)


def _complete_target(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """Shell completion of --target: the device profiles' names."""
    from backends.registry import all_targets

    return [name for name in all_targets() if name.startswith(incomplete)]


# ---- flags generated from the option groups (toolchain.settings, pass configs, backend options) -------------


def _pass_switch(entry) -> click.Option:
    return click.Option([entry.flag, entry.name], is_flag=True, default=False, help=entry.help)


def _pass_flags(names: tuple[str, ...] | None = None) -> list[click.Parameter]:
    """Each pass's switch followed by its own settings (``toolchain.passes.registry``), in the table's order."""
    from toolchain.passes.registry import PASSES

    params: list[click.Parameter] = []
    for entry in PASSES:
        if names is None or entry.name in names:
            config = entry.config_class()
            params += [_pass_switch(entry), *(options_for([config]) if config else [])]
    return params


def _backend_flags() -> list[click.Parameter]:
    """Every backend's own settings (built-in and plugins'), for compile and build."""
    from backends.registry import backend_option_groups

    return options_for(group for _name, group in backend_option_groups())


# The flag factories import the option groups when Click first asks for a command's parameters, not at start-up.


def _convert_flags() -> list[click.Parameter]:
    from toolchain.settings import SourceSettings, VerifySettings

    return options_for([SourceSettings, VerifySettings])


def _optimize_flags() -> list[click.Parameter]:
    from toolchain.settings import QuantSettings, SampleSettings, VerifySettings

    return [*_pass_flags(), *options_for([QuantSettings], only=("min_cosine",), help={
        "min_cosine": "Lowest cosine a lossy pass (--lowrank, --fp16, --dynamic-int8) may reach against the input "
                      "model."}), *options_for([VerifySettings, SampleSettings])]


def _compile_flags() -> list[click.Parameter]:
    from toolchain.settings import QuantSettings, SampleSettings, VerifySettings

    return [*options_for([VerifySettings, SampleSettings, QuantSettings]), *_backend_flags()]


def _calibrate_flags() -> list[click.Parameter]:
    from toolchain.api import CALIBRATE_VERIFY
    from toolchain.settings import QuantSettings, SampleSettings, VerifySettings

    return [*options_for([VerifySettings], only=CALIBRATE_VERIFY, required=("calib",)),
            *options_for([SampleSettings, QuantSettings])]


def _build_flags() -> list[click.Parameter]:
    from toolchain.api import build_settings
    from toolchain.passes.registry import BUILD_PASSES, pass_entry

    params: list[click.Parameter] = []
    entries = [pass_entry(name) for name in BUILD_PASSES]
    configs = {entry.config_class(): entry for entry in entries if entry.config}
    for setting in (s for s in build_settings() if s.spec.cli):
        if setting.group in configs:  # a pass's switch comes just before its own settings
            params.append(_pass_switch(configs.pop(setting.group)))
        params.append(option_for(setting))
    params += [_pass_switch(entry) for entry in entries if not entry.config]  # passes without settings
    for param in params:
        if param.name == "targets":
            param._custom_shell_complete = _complete_target  # Click's hook for a parameter's completion
    return params


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="edgekiln")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
def cli(debug: bool) -> None:
    """Convert, optimize, compile and verify neural networks for small devices.

    \b
    Typical flow:
      edgekiln convert model.pt --input input:1x3x224x224 -o model.onnx
      edgekiln optimize model.onnx --simplify -o model.simple.onnx
      edgekiln compile model.simple.onnx --backend onnxruntime -o artifact/
      edgekiln bench artifact/
    Run 'edgekiln build' with no arguments to see the whole flow on the bundled example.
    """


@cli.command(cls=GeneratedCommand, flags=_convert_flags)
@click.argument("source", required=False, type=_existing_path)
@click.option("-o", "--output", type=_existing_path, required=True, help="ONNX file to write.")
@click.option("--target", default=None, shell_complete=_complete_target,
              help="Device profile whose defaults (opset) apply; see 'edgekiln targets'.")
@json_flag
def convert(source: Path | None, output: Path, target: str | None, as_json: bool, **options: object) -> None:
    """Ingest a PyTorch, TensorFlow/Keras or ONNX model into verified ONNX."""
    from toolchain import api
    from toolchain.report import print_parity, say

    result = api.convert(source, output, target=target, **options)
    if as_json:
        echo_json(result)
        return
    say(f"converted {result.source_format} ({result.framework} {result.framework_version}) -> {result.output} "
        f"(opset {result.opset}, {result.seconds:.1f} s)")
    for note in result.notes:
        say(f"  note: {note}")
    say("  inputs: " + ", ".join(i.describe() for i in result.inputs))
    say("  outputs: " + ", ".join(o.describe() for o in result.outputs))
    print_parity(result.parity)


# CLI parameter names that differ from the recipe's keys (the recipe file itself is not one).
_RECIPE_NAMES = {"as_json": "json", "recipe": None}


def _explicit_build_options(ctx: click.Context) -> set[str]:
    """Keywords of the options the user typed (they override a recipe; defaults do not)."""
    explicit = set()
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source in (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT):
            explicit.add(_RECIPE_NAMES.get(param.name, param.name))
    return explicit


def _build_kwargs(ctx: click.Context, options: dict) -> dict:
    """The build's API keyword arguments: CLI values, a recipe's values where the user typed nothing."""
    kwargs = dict(options)
    kwargs["json"] = kwargs.pop("as_json")
    recipe = kwargs.pop("recipe")
    if recipe is not None:
        from toolchain.recipe import load_recipe, merge_recipe

        kwargs = merge_recipe(load_recipe(recipe).values, kwargs, _explicit_build_options(ctx))
    return kwargs


@cli.command(cls=GeneratedCommand, flags=_build_flags)
@click.argument("source", required=False, type=_existing_path)
@click.option("-c", "--config", "recipe", type=_existing_path, default=None,
              help="Recipe file (YAML or TOML) of build options; options typed on the command line win.")
@click.option("-o", "--output", type=_existing_path, default=Path("edgekiln-out"), show_default=True,
              help="Build folder (replaced as a whole when the build succeeds).")
@click.option("--dry-run", is_flag=True, help="Print the plan (stages, what is cached) and exit without building.")
@click.option("-q", "--quiet", is_flag=True, help="No progress or tables; errors only.")
@json_flag
@click.pass_context
def build(ctx: click.Context, **options: object) -> None:
    """Source model -> verified ONNX -> simplified -> an artifact per target, with reports.

    With no SOURCE (and no --model-class) it runs on the bundled Fashion-MNIST example.
    Stages are cached by content: an unchanged build reruns in seconds (--no-cache to rebuild).
    """
    from toolchain import api
    from toolchain.progress import build_progress, quiet_logging

    kwargs = _build_kwargs(ctx, options)
    quiet, as_json, dry_run = kwargs.pop("quiet"), kwargs.pop("json"), kwargs.pop("dry_run")
    if as_json:  # also from a recipe: a failure is then a JSON error too
        json_requested.set(True)
    announce = None if quiet or as_json else _announce
    if dry_run:
        _print_plan(api.build(**kwargs, dry_run=True, announce=announce), as_json)
        return
    with quiet_logging(quiet or as_json), build_progress(quiet or as_json) as progress:
        result = api.build(**kwargs, progress=progress, announce=announce)
    if as_json and not result.failed:  # a failed build's report goes with its JSON error
        echo_json(result.to_dict())
    elif not (quiet or as_json):
        _print_build(result)
    if result.failed:
        _some_targets_failed(result)
    if not (quiet or as_json):
        _print_next_steps(result, kwargs)


def _print_next_steps(result, kwargs: dict) -> None:
    """Where the artifacts are and the commands for them, on stderr (as the progress lines)."""
    from toolchain.next_steps import next_steps, sample_image

    folder = kwargs.get("calib")
    if folder is None and kwargs.get("source") is None and kwargs.get("model_class") is None:
        from toolchain.examples.fashion_mnist import samples_dir  # the bundled example calibrates on these

        folder = samples_dir()
    for line in next_steps(result.output, result.targets, sample_image(Path(folder) if folder else None)):
        click.echo(line, err=True)


def _announce(line: str) -> None:
    """What the build decided for the user (sample split, inferred preprocessing, warnings), on stderr."""
    click.echo(f"  {line}", err=True)


def _some_targets_failed(result) -> None:
    """Exit 8 with one line naming each failed target; the report and the other targets were written."""
    from toolchain.build import failure_line
    from toolchain.errors import TargetsFailedError

    failed = result.failed
    written = len(result.targets) - len(failed)
    raise TargetsFailedError(f"{len(failed)} of {len(result.targets)} targets failed: "
                             + "; ".join(failure_line(t, hint=False) for t in failed),
                             hint=f"The other {written} target{'s' if written != 1 else ''} and the report were "
                                  f"written to {result.output}/" if written else
                             f"The report was written to {result.output}/", result=result.to_dict())


def _print_plan(stages: list, as_json: bool) -> None:
    from toolchain.report import print_table

    if as_json:
        echo_json(stages)
        return
    cached = sum(s.cached for s in stages)
    print_table(f"build plan: {len(stages)} stages, {cached} cached, {len(stages) - cached} to run",
                ["#", "stage", "cached", "key", "what it does"],
                [(i + 1, s.name, "yes" if s.cached else "-", s.key[:12], s.description) for i, s in enumerate(stages)])


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _print_build(result) -> None:
    from toolchain.report import print_table, say

    cache = result.cache
    say(f"built {result.source} -> {result.output} ({result.seconds:.1f} s; cache: {cache['hits']} hit(s), "
        f"{cache['misses']} miss(es){'' if cache['enabled'] else ', disabled'})")
    print_table("stages", ["stage", "output", "KiB", "seconds", "worst max abs", "worst cosine", "cached"],
                [(s["stage"], s["output"], f"{s['size_bytes'] / 1024:.1f}", f"{s['seconds']:.2f}",
                  "-" if s["worst_max_abs"] is None else f"{s['worst_max_abs']:.3g}",
                  "-" if s["worst_cosine"] is None else f"{s['worst_cosine']:.6f}", "yes" if s["cached"] else "-")
                 for s in result.stages if s["output"] != "-" or s["notes"]])
    rows = []
    for t in result.targets:
        accuracy, agreement, latency = t.get("accuracy") or {}, t.get("agreement") or {}, t.get("latency") or {}
        size = "-" if t.get("size_bytes") is None else f"{t['size_bytes'] / 1024:.1f}"
        rows.append((t["target"], t["backend"], t["precision"], t["artifact"], t.get("status", "ok"), size,
                     _percent(accuracy.get("top1")), _percent(accuracy.get("top5")),
                     _percent(agreement.get("top1_agreement")),
                     f"{latency['p50_ms']:.3f}" if latency else "-", f"{latency['p90_ms']:.3f}" if latency else "-"))
    from toolchain.hostcpu import host_cpu

    print_table(f"targets (latencies measured on this machine: {host_cpu().describe()})",
                ["target", "backend", "precision", "artifact", "status", "KiB", "top-1", "top-5", "agrees w/ FP32",
                 "p50 ms", "p90 ms"], rows)
    from toolchain.build import failure_line

    for target in result.targets:
        if target.get("status", "ok") != "ok":
            say(f"  {failure_line(target)}")
            for tried in target.get("tried") or []:
                say(f"    tried: {tried}")
        for note in target["notes"]:
            say(f"  {target['artifact']}: {note}")
    for note in result.notes:
        say(f"  note: {note}")
    say(f"report: {result.output / 'report.json'} and {result.output / 'report.html'}")


@cli.command(cls=GeneratedCommand, flags=_optimize_flags)
@click.argument("model", type=_existing_path)
@click.option("-o", "--output", type=_existing_path, required=True, help="ONNX file to write.")
@json_flag
def optimize(model: Path, output: Path, as_json: bool, **options: object) -> None:
    """Run graph passes on an ONNX model and re-verify it (for INT8 with calibration, see 'calibrate').

    Order: simplify, low-rank, then fp16 or dynamic INT8. With --lowrank, --calib DIR supplies the
    calibration and held-out samples (needed by --lowrank-mode budget and bias correction).
    """
    from toolchain import api
    from toolchain.report import print_parity, print_table, say

    result = api.optimize(model, output, **options)
    if as_json:
        echo_json(result)
        return
    rows = [(r.name, r.details.get("engine", ""), f"{r.before.nodes} -> {r.after.nodes}",
             f"{r.before.initializers} -> {r.after.initializers}",
             f"{r.before.serialized_bytes / 1024:.1f} -> {r.after.serialized_bytes / 1024:.1f}") for r in result.passes]
    print_table(f"optimize -> {result.output}", ["pass", "engine", "nodes", "initializers", "KiB"], rows)
    for note in (n for r in result.passes for n in r.notes):
        say(f"  note: {note}")
    from toolchain.passes.registry import PASSES

    formatters = {entry.name: entry.formatter() for entry in PASSES if entry.report}
    for report in result.passes:
        if report.name in formatters:
            say(formatters[report.name](report))
    print_parity(result.parity)


@cli.command(name="compile", cls=GeneratedCommand, flags=_compile_flags)
@click.argument("model", type=_existing_path)
@click.option("-o", "--output", type=_existing_path, required=True, help="Artifact folder to write.")
@click.option("--backend", default=None, help="Backend (default: the target's, else onnxruntime); see 'edgekiln backends'.")
@click.option("--target", default=None, shell_complete=_complete_target, help="Device profile; see 'edgekiln targets'.")
@click.option("--precision", default=None,
              help="fp32, fp16, dynamic (INT8 weights), int8 (needs --calib); default: the target's, else fp32.")
@click.option("--threads", type=int, default=None, help="Intra-op threads the artifact runs with.")
@click.option("--graph-optimization", type=click.Choice(["disable", "basic", "extended", "all"]), default="all",
              show_default=True, help="ONNX Runtime graph optimization level.")
@json_flag
def compile_command(model: Path, output: Path, backend: str | None, target: str | None, precision: str | None,
                    threads: int | None, graph_optimization: str, as_json: bool, **options: object) -> None:
    """Lower an ONNX model to a backend artifact folder (model + manifest.json)."""
    from toolchain import api
    from toolchain.report import print_guard, print_parity, say

    result = api.compile(model, output, backend=backend, target=target, precision=precision, threads=threads,
                         graph_optimization=graph_optimization, **options)
    if as_json:
        echo_json(result)
        return
    manifest = result.artifact.manifest
    details = manifest["metrics"].get("details", {})
    built = details.get("precision", manifest["options"]["precision"])
    say(f"compiled {model} with {result.artifact.backend} ({built}) -> {result.artifact.path} "
        f"({result.seconds:.1f} s)")
    for note in details.get("notes", []):
        say(f"  {note}" if note.startswith("warning:") else f"  note: {note}")
    if details.get("not_verified_here"):
        say(f"  not verified on this machine: {details['not_verified_here']}")
    guard = result.artifact.guard
    if guard:
        print_guard(guard)
    print_parity(result.parity)


@cli.command(cls=GeneratedCommand, flags=_calibrate_flags)
@click.argument("model", type=_existing_path)
@click.option("-o", "--output", type=_existing_path, required=True, help="INT8 ONNX file to write.")
@click.option("--target", default=None, shell_complete=_complete_target,
              help="Device profile whose INT8 scheme applies; see 'edgekiln targets'.")
@click.option("--tensorrt-cache", type=_existing_path, default=None,
              help="Also write a TensorRT calibration cache from the same ranges.")
@click.option("--tensorrt-version", default="8201", show_default=True,
              help="TensorRT version in the cache header; it must match the device exactly "
                   "(8201 = TensorRT 8.2.1, JetPack 4.6.1 on the Nano; 100300 = 10.3.0).")
@json_flag
def calibrate(model: Path, output: Path, target: str | None, tensorrt_cache: Path | None, tensorrt_version: str,
              as_json: bool, **options: object) -> None:
    """Static INT8 quantization calibrated on sample images, with an accuracy guard."""
    from toolchain import api
    from toolchain.report import print_guard, say

    result = api.calibrate(model, output, target=target, tensorrt_cache=tensorrt_cache,
                           tensorrt_version=tensorrt_version, **options)
    if as_json:
        echo_json(result)
        return
    config = result.config
    say(f"calibrated {model} -> {result.output} ({result.size_before / 1024:.1f} KiB -> "
        f"{result.size_after / 1024:.1f} KiB, {100 * result.size_after / result.size_before:.0f}%, "
        f"{result.seconds:.1f} s)")
    say(f"  {config.method} ranges, {config.activation_type} activations"
        f"{' (symmetric)' if config.activation_symmetric else ''}, int8 weights "
        f"{'per channel' if config.per_channel else 'per tensor'}; ranges: {result.ranges_path}")
    say(f"  samples: {result.calibration_summary}")
    for note in result.notes:  # what each post-training pass changed, and by how much
        say(f"  {note}")
    if result.tensorrt_cache:
        say(f"  TensorRT calibration cache: {result.tensorrt_cache}")
    if result.guard:
        print_guard(result.guard.to_dict())


@cli.command()
@click.argument("artifact", type=_existing_path)
@click.option("--input", "inputs", multiple=True, metavar="[NAME=]FILE",
              help="Input as .npy, .npz or an image (preprocessed as the artifact's manifest says).")
@click.option("--top-k", type=int, default=5, show_default=True, help="Classes to show for a classifier output.")
@click.option("--save", type=_existing_path, default=None, help="Write all outputs to this .npz file.")
@click.option("--threads", type=int, default=None, help="Intra-op threads.")
@json_flag
def run(artifact: Path, inputs: tuple[str, ...], top_k: int, save: Path | None, threads: int | None,
        as_json: bool) -> None:
    """Run an artifact (or an .onnx file) once and print its outputs."""
    from toolchain import api
    from toolchain.outputs import describe_outputs, save_outputs

    _feed, outputs = api.run(artifact, inputs, threads=threads)
    if save is not None:
        save_outputs(outputs, save)
    if as_json:
        echo_json(outputs, indent=None)  # tensors: one line, as large as they are
    else:
        click.echo(describe_outputs(outputs, top_k=top_k))


@cli.command()
@click.argument("artifact", type=_existing_path)
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs first.")
@click.option("--iterations", type=int, default=100, show_default=True, help="Timed runs.")
@click.option("--threads", type=int, default=None, help="Intra-op threads (default: the artifact's).")
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size (needs a dynamic batch axis).")
@json_flag
def bench(artifact: Path, warmup: int, iterations: int, threads: int | None, batch: int, as_json: bool) -> None:
    """Measure latency percentiles, throughput and peak memory of an artifact on this machine."""
    from toolchain import api
    from toolchain.report import print_table

    result = api.bench(artifact, warmup=warmup, iterations=iterations, threads=threads, batch=batch)
    if as_json:
        echo_json(result)
        return
    print_table(f"bench {artifact} ({result.backend}, batch {result.batch}, threads {result.threads or 'default'}, "
                f"{result.iterations} runs after {result.warmup} warm-up; on {result.measured_on})",
                ["p50 ms", "p90 ms", "p99 ms", "mean ms", "throughput/s", "peak RSS MiB", "RSS growth MiB"],
                [(f"{result.p50_ms:.3f}", f"{result.p90_ms:.3f}", f"{result.p99_ms:.3f}", f"{result.mean_ms:.3f}",
                  f"{result.throughput_per_s:.1f}", f"{result.peak_rss_mb:.0f}", f"{result.rss_growth_mb:.1f}")])


@cli.command()
@click.argument("model", type=_existing_path)
@json_flag
def inspect(model: Path, as_json: bool) -> None:
    """Show an ONNX model's inputs, outputs, opset, ops, parameters, size and MACs, or a TFLite model's
    ops, tensor types, quantization parameters and size."""
    from toolchain import api

    summary = api.inspect(model)
    if isinstance(summary, dict):  # TFLite
        from backends.tflite.inspect import format_tflite_summary

        echo_json(summary) if as_json else click.echo(format_tflite_summary(summary))
        return
    from toolchain.model_info import format_summary

    echo_json(summary) if as_json else click.echo(format_summary(summary))


@cli.command()
@click.argument("artifacts", nargs=-1, required=True, type=_existing_path)
@click.option("--calib", type=_existing_path, default=None, help="Images to compare on (default: seeded random inputs).")
@click.option("--count", type=int, default=32, show_default=True, help="How many inputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of input selection.")
@click.option("--per-layer", is_flag=True, help="Rank intermediate tensors by error (ONNX models).")
@click.option("--preprocess", default=None, metavar="PRESET",
              help="How --calib images are preprocessed (imagenet, yolo, raw01, raw255, gray01); default: each "
                   "artifact's manifest, or inferred from the input shape for a bare .onnx file.")
@json_flag
def compare(artifacts: tuple[Path, ...], calib: Path | None, count: int, seed: int, per_layer: bool,
            preprocess: str | None, as_json: bool) -> None:
    """Run artifacts (ONNX, INT8 ONNX, TFLite, ...) on the same inputs and compare each with the first."""
    from toolchain import api
    from toolchain.report import print_table

    comparisons, layers = api.compare(artifacts, calib=calib, count=count, seed=seed, per_layer=per_layer,
                                      preprocess=preprocess)
    if as_json:
        echo_json({"comparisons": comparisons, "per_layer": layers})
        return
    for comparison in comparisons:
        print_table(f"{comparison.candidate} vs {comparison.reference} ({comparison.samples} inputs)",
                    ["output", "max abs", "mean abs", "cosine", "top-1 agree", "top-5 agree"],
                    [(o.name, f"{o.max_abs:.3g}", f"{o.mean_abs:.3g}", f"{o.cosine:.6f}",
                      f"{o.top_k_agreement[1]:.2%}" if 1 in o.top_k_agreement else "-",
                      f"{o.top_k_agreement[5]:.2%}" if 5 in o.top_k_agreement else "-") for o in comparison.outputs])
    for candidate, rows in layers.items():
        print_table(f"per layer: {candidate} (worst first)", ["tensor", "produced by", "op", "relative error", "cosine"],
                    [(r.tensor, r.producer, r.op_type, f"{r.relative_error:.3g}", f"{r.cosine:.6f}") for r in rows])


@cli.command(name="verify")
@click.argument("artifact", type=_existing_path)
@click.option("--on", "device", required=True, type=click.Choice(["qemu-cortex-m4", "qemu-aarch64"]),
              help="qemu-cortex-m4: an mcu artifact's firmware on QEMU mps2-an386 with TFLM; qemu-aarch64: a "
                   "TFLite artifact with aarch64 LiteRT under qemu-user.")
@click.option("--tflm-root", type=_existing_path, default=None,
              help="TensorFlow Lite Micro source tree (default: $EDGEKILN_TFLM_ROOT).")
@click.option("--flash-kb", type=float, default=None, help="Fail if the firmware needs more flash (default: manifest).")
@click.option("--ram-kb", type=float, default=None, help="Fail if the firmware needs more RAM (default: manifest).")
@click.option("--calib", type=_existing_path, default=None, help="qemu-aarch64: images to run (default: random).")
@click.option("--count", type=int, default=4, show_default=True, help="qemu-aarch64: how many inputs.")
@json_flag
def verify_command(artifact: Path, device: str, tflm_root: Path | None, flash_kb: float | None,
                   ram_kb: float | None, calib: Path | None, count: int, as_json: bool) -> None:
    """Run an artifact on its own instruction set, emulated, and compare with x86 LiteRT."""
    from toolchain.verify_device import verify_on

    result = verify_on(artifact, device, tflm_root=tflm_root, flash_kb=flash_kb, ram_kb=ram_kb, calib=calib,
                       count=count)
    if as_json:
        echo_json(result)
        return
    for note in result.notes:
        click.echo(note)
    click.echo(f"verified {artifact} on {device} in {result.seconds:.1f} s; recorded in {artifact}/manifest.json")


@cli.command(name="eval")
@click.argument("artifact", type=_existing_path)
@click.option("--labels", type=_existing_path, required=True, help="Labelled image folder (one sub-folder per class).")
@json_flag
def eval_command(artifact: Path, labels: Path, as_json: bool) -> None:
    """Top-1/top-5 accuracy of an artifact on a labelled image folder, with the artifact's preprocessing."""
    from toolchain import api

    result = api.evaluate(artifact, labels)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"top-1 {result.top1:.2%}, top-5 {result.top5:.2%} on {result.images} images "
                   f"in {result.classes} classes ({result.skipped} skipped)")


@cli.command(name="backends")
@json_flag
def backends_command(as_json: bool) -> None:
    """List backends, whether each is usable here, and what to install if not."""
    from toolchain import api
    from toolchain.report import print_table

    rows = api.backends()
    if as_json:
        echo_json(rows)
        return
    print_table("backends", ["name", "usable", "status", "precisions", "description"],
                [(r["name"], "yes" if r["available"] else "no", r["status"], ",".join(r["precisions"]),
                  r["description"]) for r in rows])


@cli.command()
@json_flag
def targets(as_json: bool) -> None:
    """List device profiles and the defaults each implies."""
    from backends.registry import all_targets
    from toolchain.report import print_table

    known = all_targets()
    if as_json:
        echo_json(list(known.values()))
        return
    print_table("targets", ["target", "backend", "precision", "opset", "device", "notes"],
                [(t.name, t.backend, t.precision, t.opset, t.description, t.notes) for t in known.values()])


def _register_compression_commands() -> None:
    """prune/distill/qat live in toolchain.compress (their modules import only click at load time)."""
    from toolchain.compress.prune_command import prune
    from toolchain.compress.train_commands import distill, qat

    for command in (prune, distill, qat):
        cli.add_command(command)


_register_compression_commands()


def _register_fleet_command() -> None:
    """'edgekiln fleet' lives in toolchain.fleet (its command module imports only click; Ray loads when it runs)."""
    from toolchain.fleet.command import fleet

    cli.add_command(fleet)


_register_fleet_command()


@contextlib.contextmanager
def _progress_logging() -> Iterator[None]:
    """Show the 'edgekiln' logger's progress lines on stderr while a command runs.

    Warnings are not shown here: every warning a stage logs is also in its result's notes,
    which the command prints in its summary (API users get the warnings from logging).
    """
    logger = logging.getLogger("edgekiln")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    handler.addFilter(lambda record: record.levelno < logging.WARNING)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


# Click's shell-completion variable for the 'edgekiln' program name (see Click's shell completion).
COMPLETE_VAR = "_EDGEKILN_COMPLETE"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning errors into one line and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    if os.environ.get(COMPLETE_VAR):  # a completion request (or script): Click answers it and exits
        cli.main(args=args, prog_name="edgekiln", complete_var=COMPLETE_VAR)
    debug = "--debug" in args or os.environ.get("EDGEKILN_DEBUG") == "1"
    if not args:
        click.echo(cli.get_help(click.Context(cli, info_name="edgekiln")))
        sys.exit(0)
    from toolchain.quiet import debug_output

    token, json_token = debug_output.set(debug), json_requested.set(wants_json(args))
    interrupted, unwatch = _note_interrupts()
    try:
        try:
            with _progress_logging():
                code = cli.main(args=args, prog_name="edgekiln", standalone_mode=False)
        except BaseException as exc:
            if interrupted and not debug and not isinstance(exc, SystemExit):
                # Ctrl-C inside a library's import or cleanup can surface as another error type.
                from toolchain.failures import interruption

                interruption(interrupted).end()
            _exit_for(exc, args, debug, interrupted)
        finally:
            debug_output.reset(token)
            json_requested.reset(json_token)
            unwatch()
        sys.exit(code if isinstance(code, int) else 0)
    except SystemExit as ending:
        _end_now_if_a_run_is_stuck(ending)
        raise


def _end_now_if_a_run_is_stuck(ending: SystemExit) -> None:
    """Exit at once when a model run that cannot be stopped is still going: waiting for it would hang."""
    from toolchain.watchdog import abandoned

    if abandoned():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(ending.code if isinstance(ending.code, int) else 1)


def _note_interrupts() -> tuple[list[int], Callable[[], None]]:
    """Record SIGINT, SIGTERM, SIGHUP and SIGQUIT and raise KeyboardInterrupt for each, as Python does for SIGINT.

    SIGTERM (docker stop, systemd, kill), SIGHUP (the terminal closed) and SIGQUIT thereby run the same
    clean-up as Ctrl-C: staging folders are removed on the way out. The list holds the signals received, in
    order. Handlers the embedding program installed are left alone. Signals also stop a model run that is
    busy inside ONNX Runtime (``toolchain.watchdog``); the returned function undoes that.
    """
    import signal

    from toolchain.watchdog import watch_signals

    seen: list[int] = []

    def handler(signum: int, frame: object) -> None:
        seen.append(signum)
        signal.default_int_handler(signum, frame)

    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    for number in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
        if signal.getsignal(number) == signal.SIG_DFL:
            signal.signal(number, handler)
    return seen, watch_signals()


def _exit_for(exc: BaseException, args: list[str], debug: bool, interrupted: list[int] | None = None) -> None:
    """One line and the error's exit code for a failed command; --debug adds the traceback, same exit code."""
    from toolchain.failures import describe

    if isinstance(exc, SystemExit):
        raise exc
    failure = describe(exc, args, interrupted or [])
    if debug and not isinstance(exc, (click.ClickException, click.exceptions.Abort, KeyboardInterrupt)):
        import traceback

        traceback.print_exception(exc)
    failure.end()

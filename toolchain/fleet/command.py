"""The ``edgekiln fleet`` command (registered in ``toolchain.cli``). Only click is imported at load time."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from toolchain.json_output import echo_json, json_flag

_path = click.Path(path_type=Path)


@click.command(name="fleet")
@click.argument("fleet_file", type=_path)
@click.option("-o", "--output", type=_path, default=Path("edgekiln-fleet"), show_default=True,
              help="Output folder: one build folder per model, plus the fleet's report.json and report.html.")
@click.option("--dry-run", is_flag=True, help="Print the plan (models x targets, cached stages, tasks) and exit.")
@click.option("--address", default=None, metavar="auto|HOST:PORT|ray://HOST:10001",
              help="Join this Ray cluster (default: start a local Ray instance sized to this machine).")
@click.option("--no-ray", is_flag=True, help="Run the tasks one after another in this process (Ray not needed).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="CPUs of the local Ray instance (default: all of this machine's).")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True,
              help="Times Ray reruns a task whose worker died (a task's own errors are not retried).")
@click.option("--cache-dir", type=_path, default=None,
              help="Stage cache root every worker sees (a shared file system on a cluster; default: "
                   "$EDGEKILN_CACHE_DIR or ~/.cache/edgekiln).")
@click.option("--fail-fast", is_flag=True, help="Stop the fleet at the first failed task and write nothing.")
@json_flag
def fleet(fleet_file: Path, output: Path, dry_run: bool, address: str | None, no_ray: bool, workers: int | None,
          retries: int, cache_dir: Path | None, fail_fast: bool, as_json: bool) -> None:
    """Build many models for many targets: stage tasks on Ray sharing one stage cache.

    FLEET_FILE (YAML) lists models (build recipes, or the same keys inline) and targets. Each model's
    ONNX is converted and simplified once; then one task per target compiles and measures it.
    Exit 8 when a task failed (the other models are still delivered).
    """
    from toolchain.errors import TargetsFailedError, UsageError
    from toolchain.fleet.plan import plan_document, plan_fleet, plan_lines
    from toolchain.fleet.report import fleet_report
    from toolchain.fleet.run import run_fleet
    from toolchain.fleet.spec import load_fleet
    from toolchain.stage_cache import default_cache_root

    if no_ray and (address or workers):
        raise UsageError("--no-ray runs in this process; it takes neither --address nor --workers")
    if address and workers:
        raise UsageError("--workers sizes a local Ray instance; a cluster joined with --address has its own")
    if not no_ray and not dry_run:
        from toolchain.fleet.engines import import_ray, probe_address

        import_ray()  # "install edgekiln[fleet]" and an unreachable --address fail before any planning work
        if address:
            probe_address(address)
    say = _say
    plan = plan_fleet(load_fleet(fleet_file), output, (cache_dir or default_cache_root()).absolute(),
                      announce=lambda line: click.echo(f"  {line}", err=True))
    if dry_run:
        if as_json:
            echo_json(plan_document(plan))
            return
        for line in plan_lines(plan):
            click.echo(line)
        return
    say(plan_lines(plan)[0])
    engine = "local" if no_ray else "ray"
    if sys.stderr.isatty() and not as_json:
        from toolchain.fleet.live import live_fleet

        # A terminal gets the live per-model table (its last state stays on screen as the summary);
        # logs, CI and --json keep one line per finished task and the per-model lines.
        with live_fleet(plan, show_running=no_ray) as live:
            result = run_fleet(plan, engine=engine, address=address, workers=workers, retries=retries,
                               fail_fast=fail_fast, on_finished=live.finished, on_started=live.started)
    else:
        result = run_fleet(plan, engine=engine, address=address, workers=workers, retries=retries,
                           fail_fast=fail_fast, say=say)
        for model, counts in _per_model(result).items():
            say(f"{model}: {counts}")
    say(f"fleet done in {result.seconds:.1f}s: {output / 'report.html'}")
    if result.failed:
        names = ", ".join(f"{r['model']}/{r['task']}" for r in result.failed[:5])
        more = f" and {len(result.failed) - 5} more" if len(result.failed) > 5 else ""
        raise TargetsFailedError(f"{len(result.failed)} of {len(result.results)} fleet tasks failed or were "
                                 f"skipped: {names}{more}; the others were delivered to '{output}' "
                                 "(reasons in report.html)", result=fleet_report(result))
    if as_json:
        echo_json(fleet_report(result))


def _say(line: str) -> None:
    click.echo(line, err=True)


def _per_model(result) -> dict[str, str]:
    from toolchain.fleet.report import summary

    lines = {}
    for model, counts in summary(result.results).items():
        cached = counts.pop("cached", 0)
        parts = [f"{n} {state}" for state, n in sorted(counts.items())]
        lines[model] = ", ".join(parts) + (f" ({cached} cached)" if cached else "")
    return lines

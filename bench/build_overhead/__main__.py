"""``python -m bench.build_overhead``: the command line (see the package's docstring), and the two internal
child-process modes, ``--raw CONFIG`` (variant C) and ``--instrument OUT_JSON BUILD_ARGS...`` (the timed B)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import bench.build_overhead as package
from bench.build_overhead.instrument import instrumented_build, timed_pair
from bench.build_overhead.params import JSON_PATH, MD_PATH, WORK_DIR, progress
from bench.build_overhead.raw import raw_main
from bench.build_overhead.render import render
from bench.build_overhead.results import Record, load_record, record_json, summarize
from bench.build_overhead.rounds import fill_cache, guard_outcome, import_costs, run_round
from bench.build_overhead.workspace import Workspace, commands_as_typed, setup


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.build_overhead",
                                     description=package.__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of A, B, C and D (default 3)")
    parser.add_argument("--no-timers", action="store_true",
                        help="skip the extra run of B with timers on its functions")
    parser.add_argument("--md", type=Path, default=MD_PATH, help="markdown output (default bench/build_overhead.md)")
    parser.add_argument("--json", type=Path, default=JSON_PATH,
                        help="JSON output (default bench/build_overhead.json)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the markdown from the JSON of an earlier run, measuring nothing")
    parser.add_argument("--raw", type=Path, default=None, help=argparse.SUPPRESS)  # variant C's child process
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["--instrument"]:  # the timed run of B: everything after the path is edgekiln's
        return instrumented_build(Path(arguments[1]), arguments[2:])
    args = parse_args(arguments)
    if args.raw is not None:
        return raw_main(args.raw)
    if args.render_only:
        record = load_record(args.json)
        args.md.write_text(render(record, summarize(record.rounds)), encoding="utf-8")
        progress(f"rewrote {args.md} from {args.json}")
        return 0
    from bench import machine

    started, started_utc = time.perf_counter(), datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = machine.load_average()
    workspace = Workspace(WORK_DIR)
    raw_config, settings = setup(workspace)
    progress("filling variant D's stage cache (one cold build)")
    fill_seconds, fill_report = fill_cache(workspace)
    rounds = [run_round(index, workspace, raw_config) for index in range(args.repeats)]
    settings["guard"] = guard_outcome(workspace.output("A"))
    timed = None
    if not args.no_timers:
        progress("one more run of B with timers on its functions, then C")
        timed = timed_pair(workspace, raw_config)
    progress("measuring import costs")
    imports = import_costs()
    command = shlex.join(["python", "-m", "bench.build_overhead", *arguments])
    record = Record(command, started_utc, time.perf_counter() - started, machine.describe(), load_start,
                    machine.load_average(), settings, commands_as_typed(workspace, raw_config), rounds,
                    fill_seconds, fill_report, timed, imports)
    summary = summarize(rounds)
    args.json.write_text(json.dumps(record_json(record, summary), indent=1) + "\n", encoding="utf-8")
    args.md.write_text(render(record, summary), encoding="utf-8")
    progress(f"done in {record.seconds / 60:.1f} min: wrote {args.md} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The command line of a single-record benchmark: run it, or re-render its Markdown from the saved JSON."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench import machine

BENCH_DIR = Path(__file__).resolve().parent


def record_main(name: str, description: str, measure: Callable[[], dict[str, Any]],
                render: Callable[[dict[str, Any]], str], argv: Sequence[str] | None = None) -> int:
    """``python -m bench.<name>``: ``measure()``'s keys in a record with the command, start time, commit,
    machine and minutes, written to ``bench/<name>.json`` and ``.md``; ``--render FILE`` only re-renders."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{name}", description=description)
    parser.add_argument("--render", type=Path, help="rewrite the Markdown of a saved JSON record and exit")
    args = parser.parse_args(argv)
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return 0
    started = time.monotonic()
    record: dict[str, Any] = {"command": f"python -m bench.{name}",
                              "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                              "commit": machine.commit(), "machine": machine.describe()}
    record.update(measure())
    record["minutes"] = (time.monotonic() - started) / 60
    out = BENCH_DIR / f"{name}.json"
    out.write_text(json.dumps(record, indent=1, default=str))
    out.with_suffix(".md").write_text(render(record))
    print(f"wrote {out} and {out.with_suffix('.md')}", flush=True)
    return 0

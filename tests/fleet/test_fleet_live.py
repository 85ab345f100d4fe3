"""The live per-model table of ``edgekiln fleet`` (toolchain/fleet/live.py), fed by real --no-ray fleets,
and the terminal test: a table on a pseudo-terminal, the one-line-per-task log everywhere else."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console

from fleet_helpers import ctrl_c_reaches_the_child
from helpers import run_main
from toolchain.fleet.live import FleetBoard
from toolchain.fleet.plan import plan_fleet
from toolchain.fleet.run import run_fleet
from toolchain.fleet.spec import load_fleet

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def render(board: FleetBoard) -> str:
    """The board's table as rich draws it on a terminal, as text."""
    console = Console(file=io.StringIO(), force_terminal=True, width=150, record=True)
    console.print(board.table())
    return console.export_text()


def rows(board: FleetBoard) -> dict[str, list[str]]:
    """The board's table read back: model -> its cells."""
    return {cells[0]: cells[1:] for line in render(board).splitlines() if line.startswith("│")
            for cells in [[c.strip() for c in line.strip("│").split("│")]]}


def test_the_table_counts_a_fleet_with_one_failing_model(failing_fleet_file, tmp_path):
    plan = plan_fleet(load_fleet(failing_fleet_file), tmp_path / "out", tmp_path / "c")
    board = FleetBoard(plan, show_running=True)
    seen_while_running: dict[str, list[str]] = {}

    def started(task) -> None:
        board.started(task)
        if task.id == "m1/prepare":  # m0 is over, m1's first task has just begun
            seen_while_running.update(rows(board))

    result = run_fleet(plan, engine="local", on_finished=board.finished, on_started=started)
    assert [r["status"] for r in result.results].count("refused") == 1
    # columns: done, running, pending, failed, total, last finished
    assert seen_while_running == {"m0": ["3", "0", "0", "1", "4", seen_while_running["m0"][-1]],
                                  "m1": ["0", "1", "3", "0", "4", ""]}
    assert seen_while_running["m0"][-1].startswith("x86-int8 refused ")
    final = rows(board)
    assert final["m0"][:5] == ["3", "0", "0", "1", "4"] and final["m0"][5].startswith("x86-int8 refused ")
    assert final["m1"][:5] == ["4", "0", "0", "0", "4"] and final["m1"][5].startswith("x86-int8 ok ")
    assert "fleet: 8/8 tasks finished, 1 failed" in render(board)

    # The same results as Ray's engine reports them (finished only): no "running" column, the unfinished
    # tasks are pending. Then a rerun is all cached, and the table says so.
    on_ray = FleetBoard(plan, show_running=False)
    for found in result.results[:5]:
        on_ray.finished(found)
    assert {name: cells[:4] for name, cells in rows(on_ray).items()} == {"m0": ["3", "0", "1", "4"],
                                                                        "m1": ["1", "3", "0", "4"]}
    again = plan_fleet(load_fleet(failing_fleet_file), tmp_path / "again", tmp_path / "c")
    cached = FleetBoard(again, show_running=True)
    run_fleet(again, engine="local", on_finished=cached.finished, on_started=cached.started)
    assert rows(cached)["m1"][:5] == ["4 (4 cached)", "0", "0", "0", "4"]


def test_without_a_terminal_the_fleet_logs_one_line_per_task(failing_fleet_file, tmp_path, capsys):
    code, _out, err = run_main(["fleet", str(failing_fleet_file), "-o", str(tmp_path / "out"), "--cache-dir",
                                str(tmp_path / "c"), "--no-ray"], capsys)
    assert code == 8
    lines = err.splitlines()
    tasks = [line for line in lines if line.startswith("[")]
    assert len(tasks) == 8 and tasks[0].startswith("[1/8] m0 prepare ok ")
    assert any(line.startswith("[4/8] m0 x86-int8 refused ") for line in tasks)
    assert "m0: 3 ok, 1 refused" in lines and "m1: 4 ok" in lines
    assert "┃" not in err and "\x1b[" not in err  # no table, no terminal codes in a log


def _on_a_terminal(args: list[str], interrupt: bool = False, timeout: float = 240) -> tuple[int, str]:
    """Run the CLI in a fresh interpreter with stderr on a pseudo-terminal; what it drew, escapes removed.
    With ``interrupt``, SIGINT (Ctrl-C) as soon as the live table is first drawn."""
    main, child = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "COLUMNS": "120", "LINES": "40"}
    process = subprocess.Popen([sys.executable, "-m", "toolchain", *args], stderr=child, stdout=subprocess.DEVNULL,
                               env=env, cwd=ROOT, preexec_fn=ctrl_c_reaches_the_child)
    os.close(child)
    drawn, sent, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(main, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                drawn += chunk
            if interrupt and not sent and b"tasks finished" in drawn:
                process.send_signal(signal.SIGINT)
                sent = True
            if not ready and process.poll() is not None:
                break
        code = process.wait(timeout=30)
    finally:
        process.kill()
        os.close(main)
    return code, ANSI.sub("", drawn.decode("utf-8", errors="replace")).replace("\r", "")


def test_on_a_terminal_a_live_table_and_ctrl_c_still_writes_nothing(failing_fleet_file, tmp_path):
    args = ["fleet", str(failing_fleet_file), "-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c"),
            "--no-ray"]
    code, text = _on_a_terminal(args, interrupt=True)
    assert code == 130, text
    assert text.rstrip().endswith("interrupted") and "Traceback" not in text
    assert not (tmp_path / "out").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    code, text = _on_a_terminal(args)
    assert code == 8, text
    last = text[text.rindex("fleet: 8/8 tasks finished"):]  # the table left on screen
    assert last.startswith("fleet: 8/8 tasks finished, 1 failed")
    table = {cells[0]: cells[1:6] for line in last.splitlines() if line.startswith("│")
             for cells in [[c.strip() for c in line.strip("│").split("│")]]}
    assert table == {"m0": ["3", "0", "0", "1", "4"], "m1": ["4", "0", "0", "0", "4"]}
    assert "m0 x86-int8 refused" in text.split("fleet: 8/8")[0]  # the failure's line, printed above the table
    assert not re.search(r"^\[\d/8\] .* ok ", text, re.M)  # no log line per successful task
    assert "error: 1 of 8 fleet tasks failed" in text and (tmp_path / "out" / "report.html").is_file()
    code, text = _on_a_terminal([*args, "-o", str(tmp_path / "json"), "--json"])
    assert code == 8 and "┃" not in text and len(re.findall(r"^\[\d/8\] ", text, re.M)) == 8  # --json: the log

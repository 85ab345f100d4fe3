"""``--json``: one JSON document on stdout per command, a result or an error, in shapes defined here.

A result is the command's result object made JSON-able (``jsonable``). A failure is
``{"error": {"message", "exit_code", "kind", "hint"}}``, plus ``"result"`` where the command
produced one before failing (a build with failed targets). Progress and warnings go to stderr.
The CLI imports this at start-up: the standard library and click only.
"""

from __future__ import annotations

import contextvars
import dataclasses
import enum
import json
import math
from collections.abc import Callable
from pathlib import PurePath
from typing import Any

import click

JSON_HELP = "Print the result as one JSON document on stdout (a failure as {\"error\": ...}); progress on stderr."


def json_flag(command: Callable) -> Callable:
    """The ``--json`` flag every result-printing command takes (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=JSON_HELP)(command)


# Whether this command's output is JSON: set by the entry point from the command line (before parsing, so
# usage errors are JSON too), and by a build whose recipe says `json: true`; read when a failure is printed.
json_requested: contextvars.ContextVar[bool] = contextvars.ContextVar("edgekiln_json", default=False)


def wants_json(args: list[str]) -> bool:
    """Whether a command line asks for JSON."""
    return "--json" in args


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON data: ``to_dict()`` where a result defines it, dataclass fields otherwise.

    Paths become strings, numpy values lists or numbers, and NaN/Inf ``null`` (JSON has no NaN).
    """
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if callable(getattr(value, "to_dict", None)):
        return jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars
        return jsonable(value.tolist())
    return str(value)


def echo_json(document: Any, *, indent: int | None = 2) -> None:
    """Print ``document`` as one JSON document on stdout (``indent=None``: one line, for large tensors)."""
    click.echo(json.dumps(jsonable(document), indent=indent, allow_nan=False))


def error_document(message: str, *, exit_code: int, kind: str, hint: str | None = None,
                   result: Any = None) -> dict[str, Any]:
    """What ``--json`` prints on stdout when a command fails (its exit code is unchanged)."""
    document: dict[str, Any] = {"error": {"message": message, "exit_code": exit_code, "kind": kind, "hint": hint}}
    if result is not None:
        document["result"] = result
    return document

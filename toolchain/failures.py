"""How a failed command ends: one line on stderr, the exit code, and with --json the error object on stdout.

Every way out of a failed command is described here once (user errors, usage errors, bugs, signals),
so the line, the exit code and the JSON error's fields always agree. Standard library and click only.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

import click

EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Failure:
    """The stderr line, the exit code, and the JSON error's fields of one failed command."""

    line: str
    message: str
    exit_code: int
    kind: str
    hint: str | None = None
    result: object = None

    def end(self) -> None:
        """Print the line (and with --json the error document on stdout), then exit with the code."""
        from toolchain.json_output import echo_json, error_document, json_requested

        click.echo(self.line, err=True)
        if json_requested.get():
            echo_json(error_document(self.message, exit_code=self.exit_code, kind=self.kind, hint=self.hint,
                                     result=self.result))
        sys.exit(self.exit_code)


def one_line(text: str) -> str:
    return " ".join(text.split())


def interruption(seen: list[int]) -> Failure:
    """The first signal that stopped the command: Ctrl-C, else SIGTERM, SIGHUP or SIGQUIT (exit 128 + its number,
    as a shell reports a process killed by it)."""
    import signal

    if seen and seen[0] != signal.SIGINT:
        name = signal.Signals(seen[0]).name
        return Failure(f"edgekiln: terminated ({name})", f"terminated ({name})", 128 + seen[0], "terminated")
    return Failure("interrupted", "interrupted", EXIT_INTERRUPTED, "interrupted")


def kind(exc: BaseException) -> str:
    """'input_file' for InputFileError: the nearest class of toolchain.errors, in snake case."""
    from toolchain import errors

    cls = next(c for c in type(exc).__mro__ if c.__module__ == errors.__name__)
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__.removesuffix("Error")).lower() or "toolchain"


def describe(exc: BaseException, args: list[str], interrupted: list[int]) -> Failure:
    """What the user is told about ``exc``; a bug (any other exception) is an internal error."""
    from toolchain.errors import ToolchainError, clip

    if isinstance(exc, ToolchainError):
        message = one_line(exc.one_line())
        return Failure(f"error: {message}", message, exc.exit_code, kind(exc), exc.hint and one_line(exc.hint),
                       getattr(exc, "result", None))
    if isinstance(exc, (click.exceptions.Abort, KeyboardInterrupt)):
        return interruption(interrupted)
    if isinstance(exc, click.ClickException):
        command = " ".join(a for a in args[:1] if not a.startswith("-"))
        message, hint = one_line(exc.format_message()), f"see 'edgekiln {command + ' ' if command else ''}--help'"
        return Failure(f"error: {message} ({hint})", message, exc.exit_code, "usage", hint)
    message = f"{type(exc).__name__}: {clip(one_line(str(exc)), 300)}"
    hint = "rerun with --debug for the traceback and please report it"
    return Failure(f"internal error: {message} ({hint})", message, EXIT_INTERNAL, "internal", hint)

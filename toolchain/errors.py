"""User-facing error family.

Everything a user can cause (bad file, bad option, a model that does not verify)
raises a ``ToolchainError`` subclass. The CLI prints those as one line and exits
with the class's ``exit_code``; anything else is a bug and gets a traceback only
with ``--debug``.
"""

from __future__ import annotations

import re
import unicodedata


# A first line longer than this is shortened at a word boundary (whole words, then " ..."); SDK
# messages are one long line at most a few hundred characters, so in practice nothing is cut.
MAX_LINE = 2000


def clip(text: str, limit: int = MAX_LINE) -> str:
    """``text`` whole if it fits, else cut at the last space before ``limit`` and marked: never mid-word."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[:cut if cut > 0 else limit].rstrip() + " ..."


# First lines that announce an error without giving it: the reason is the message's last line.
_REASON_AT_END = ("The following operation failed in the TorchScript interpreter",)


def printable(text: str) -> str:
    """``text`` with every control, format or unassigned character written as an escape (``\\x1b``).

    Names inside a model (nodes, inputs, outputs) are data chosen by whoever made the file: printed raw,
    ANSI/OSC sequences among them would recolour, retitle or rewrite the user's terminal.
    """
    return "".join(ch if ch == " " or unicodedata.category(ch)[0] not in "CZ"  # C: controls, Z: odd spaces
                   else ch.encode("unicode_escape").decode("ascii") for ch in text)


def first_line(exc: BaseException, limit: int = MAX_LINE) -> str:
    """The whole first line of an exception's message (SDKs raise multi-line C++ traces), or its type name.

    Where the first line only announces an error (TorchScript's interpreter puts its traceback between
    that and the reason), the last line, which says what failed, is added.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = lines[0]
    if first.startswith(_REASON_AT_END) and len(lines) > 1:
        reason = re.sub(r"^[A-Za-z]*Error: ", "", lines[-1])  # the interpreter's own exception type adds nothing
        first = f"the TorchScript code failed: {reason}"
    return clip(first, limit)


_TRACE_STARTS = ("Traceback", "Stacktrace", "Stack trace", "File \"", "at ", "#")


def whole_message(exc: BaseException, limit: int = MAX_LINE) -> str:
    """An SDK error's message as one line: its lines joined until a stack trace begins.

    ONNX Runtime puts the useful part after the first line ("...for the following indices" /
    "index: 0 Got: 1 Expected: 10"), so ``first_line`` alone would drop it.
    """
    lines = []
    for line in str(exc).strip().splitlines():
        text = line.strip()
        if lines and text.startswith(_TRACE_STARTS):
            break
        if text:
            lines.append(text)
    return clip(" ".join(lines), limit) if lines else type(exc).__name__


class ToolchainError(Exception):
    """Base for errors caused by the user's input or environment, not by a bug."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message.rstrip(".")
        return printable(f"{text}. {self.hint}" if self.hint else f"{text}.")

    def __str__(self) -> str:  # API users see the hint too, not only the CLI
        return self.one_line()


class UsageError(ToolchainError):
    """Options that are malformed, contradictory or unsupported."""

    exit_code = 2


class InputFileError(ToolchainError):
    """A model or data file that is missing, unreadable, corrupt or of the wrong kind."""

    exit_code = 3


class ConversionError(ToolchainError):
    """A framework could not turn the model into ONNX (or ONNX into a backend format)."""

    exit_code = 4


class VerificationError(ToolchainError):
    """The converted model's numbers differ from the reference beyond tolerance."""

    exit_code = 5


class MissingDependencyError(ToolchainError):
    """An optional SDK is needed but not installed."""

    exit_code = 6


class OutputError(ToolchainError):
    """The output location cannot be written."""

    exit_code = 7


class TargetsFailedError(ToolchainError):
    """A build delivered some targets but not all: the failed ones are in the report, the rest were written."""

    exit_code = 8

    def __init__(self, message: str, *, hint: str | None = None, result: dict | None = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result  # the build's report: --json prints it with the error

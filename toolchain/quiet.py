"""Keep third-party converters' progress output off the user's terminal while they run.

Exporters (torch.onnx, tf2onnx, onnx2tf) print progress, warnings and log lines;
edgekiln prints its own report instead. Levels are restored afterwards, so this
has no lasting side effect.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator


# Set by the CLI's --debug (or EDGEKILN_DEBUG=1): captured native logs are then replayed.
debug_output: contextvars.ContextVar[bool] = contextvars.ContextVar("edgekiln_debug_output", default=False)


@contextlib.contextmanager
def quiet(*logger_names: str) -> Iterator[io.StringIO]:
    """Silence stdout, Python warnings and the named loggers (below ERROR) for the block.

    Yields the captured stdout, so a caller can include it in an error message.
    """
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    captured = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(captured):
            warnings.simplefilter("ignore")
            yield captured
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """Capture what C/C++ code writes straight to file descriptor 2 during the block.

    TensorFlow's absl logging prints start-up lines before absl is initialised,
    which no log-level variable suppresses. The capture is replayed if the block
    fails, or always in debug mode, so nothing useful is lost.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    failed = False
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed or debug_output.get() or os.environ.get("EDGEKILN_DEBUG") == "1":
                sink.seek(0)
                sys.stderr.write(sink.read().decode(errors="replace"))

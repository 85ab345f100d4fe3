"""Keep third-party converters' progress output off the user's terminal while they run.

Exporters (torch.onnx, tf2onnx, onnx2tf) print progress, warnings and log lines;
edgekiln prints its own report instead. Levels are restored afterwards, so this
has no lasting side effect.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


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

"""Where compiled TFLM objects and the aarch64 userland are kept: a tool cache, like ccache's.

Both are keyed by content (compiler, flags and TFLM sources; LiteRT and numpy
versions), never hold results, and take minutes to rebuild, so they live apart
from the stage cache: ``$EDGEKILN_TOOLS_CACHE``, else ``<edgekiln cache root>/tools``.
``--no-cache`` does not apply to them.
"""

from __future__ import annotations

import os
from pathlib import Path

TOOLS_ENV = "EDGEKILN_TOOLS_CACHE"


def tools_cache_root() -> Path:
    explicit = os.environ.get(TOOLS_ENV)
    if explicit:
        return Path(explicit)
    from toolchain.cache_root import default_cache_root

    return default_cache_root() / "tools"

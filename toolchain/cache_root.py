"""Where edgekiln keeps its caches (stage outputs, calibration sets, device tools): one root, one variable."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "EDGEKILN_CACHE_DIR"


def default_cache_root() -> Path:
    """$EDGEKILN_CACHE_DIR, else $XDG_CACHE_HOME/edgekiln, else ~/.cache/edgekiln."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "edgekiln"

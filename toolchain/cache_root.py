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


# Below this much free space a cache entry (a model, a calibration set) is unlikely to fit.
LOW_SPACE_BYTES = 16 << 20


def cache_problem(root: Path) -> tuple[str, bool] | None:
    """Why the cache at ``root`` cannot be used, and whether it cannot be read either; None when it can.

    Checked once before a command starts, so the user reads up front that nothing will be cached (a file
    given as --cache-dir, a read-only or full disk), not only after every write failed.
    """
    import shutil

    existing = next((p for p in (root, *root.parents) if p.exists()), None)
    if existing is None:
        return None
    if existing != root and not existing.is_dir():
        return f"'{existing}' is a file, not a folder", True
    if existing == root and not root.is_dir():
        return "it is a file, not a folder", True
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"'{existing}' is not writable", False
    try:
        free = shutil.disk_usage(existing).free
    except OSError:
        return None
    if free < LOW_SPACE_BYTES:
        return f"its disk has only {free // 1024} KiB free", False
    return None

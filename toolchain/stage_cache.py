"""Content-addressed cache of build stages: a stage whose inputs are unchanged is restored, not rerun.

A stage's key is a hash of everything that can change its output (see ``toolchain.digests``);
an entry holds the files the stage wrote and its JSON record. Entries are immutable once
published and are published atomically, so concurrent builds sharing a cache never see half an
entry; a damaged entry (a file whose hash no longer matches) is ignored, removed and rebuilt.

Layout: ``<root>/stages/<key[:2]>/<key>/{entry.json, files/...}``. We write this by hand: no
well-kept library caches directories of build outputs keyed by our own stage keys (joblib's
Memory caches function return values by pickling them, which we refuse to load).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.cache_root import CACHE_ENV, default_cache_root  # noqa: F401 - re-exported
from toolchain.fileio import atomic_directory, sha256_file

ENTRY = "entry.json"
FILES = "files"

log = logging.getLogger("edgekiln")


@dataclass
class CachedStage:
    """A cache entry found for a key: its record and the files it can restore."""

    key: str
    folder: Path
    record: dict[str, Any]
    files: dict[str, dict[str, Any]]

    def restore(self, destination: Path) -> None:
        """Copy the entry's files into ``destination`` (a build's staging folder), checking each hash."""
        for relative, meta in self.files.items():
            source = self.folder / FILES / relative
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            if target.stat().st_size != meta["size"] or sha256_file(target) != meta["sha256"]:
                raise _DamagedEntry(f"{relative} does not match its recorded hash")


class _DamagedEntry(Exception):
    pass


@dataclass
class StageCache:
    """The stage cache under ``root``; ``enabled=False`` (--no-cache) makes every lookup a miss and stores nothing."""

    root: Path
    enabled: bool = True
    hits: int = 0
    misses: int = 0
    notes: list[str] = field(default_factory=list)

    def _folder(self, key: str) -> Path:
        return self.root / "stages" / key[:2] / key

    def lookup(self, key: str) -> CachedStage | None:
        """The entry for ``key`` if present and readable; None otherwise (does not count hits)."""
        if not self.enabled:
            return None
        folder = self._folder(key)
        try:
            entry = json.loads((folder / ENTRY).read_text())
        except (OSError, ValueError):
            return None
        if entry.get("key") != key:
            return None
        return CachedStage(key, folder, entry["record"], entry["files"])

    def restore(self, key: str, destination: Path) -> dict[str, Any] | None:
        """Restore the entry for ``key`` into ``destination``; its record, or None on a miss.

        A damaged or vanished entry (another process replaced it mid-copy) is a miss, never an error:
        the cache only saves time.
        """
        found = self.lookup(key)
        if found is None:
            self.misses += 1
            return None
        try:
            found.restore(destination)
        except (OSError, _DamagedEntry) as exc:
            self.notes.append(f"cache entry {key[:12]} ignored ({exc}) and rebuilt")
            shutil.rmtree(found.folder, ignore_errors=True)
            self.misses += 1
            return None
        self.hits += 1
        return found.record

    def store(self, key: str, source_root: Path, files: list[Path], record: dict[str, Any]) -> None:
        """Publish ``files`` (paths under ``source_root``) and ``record`` as the entry for ``key``.

        A failure to write is a note, not an error: a full disk must not fail a build that succeeded.
        """
        if not self.enabled or self.lookup(key) is not None:
            return
        folder = self._folder(key)
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
            with atomic_directory(folder) as staging:
                listed: dict[str, dict[str, Any]] = {}
                for path in files:
                    relative = path.relative_to(source_root).as_posix()
                    target = staging / FILES / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    listed[relative] = {"size": target.stat().st_size, "sha256": sha256_file(target)}
                entry = {"key": key, "record": record, "files": listed}
                (staging / ENTRY).write_text(json.dumps(entry, indent=1, sort_keys=True) + "\n")
        except Exception as exc:  # noqa: BLE001 - any failure here only costs a future rebuild
            if not any(note.startswith("stage not cached") for note in self.notes):  # once, not per stage
                self.notes.append(f"stage not cached ({type(exc).__name__}: {exc}); later stages may not be either")

    def summary(self) -> dict[str, Any]:
        return {"dir": str(self.root), "enabled": self.enabled, "hits": self.hits, "misses": self.misses}


def files_under(folder: Path) -> set[Path]:
    """Every file below ``folder`` (to find what a stage added to a build's staging folder)."""
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()

"""Atomic file output and content hashing.

Every file edgekiln produces is written under a temporary name in the destination
folder and renamed into place only when complete, so an interrupted or failed
command never leaves a half-written model where a later step would trust it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from toolchain.errors import InputFileError, OutputError

_CHUNK = 1 << 20


def _umask() -> int:
    # os.umask can only be read by setting it; restore immediately.
    current = os.umask(0)
    os.umask(current)
    return current


def _publishable(path: Path) -> None:
    """Give a temp file/folder the modes a normal create would (mkstemp/mkdtemp make them owner-only)."""
    path.chmod((0o777 if path.is_dir() else 0o666) & ~_umask())


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_path(path: Path) -> str:
    """Hash of a file, or of a folder's files (relative names and contents, sorted)."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def require_file(path: Path, what: str = "input file") -> Path:
    if not path.exists():
        raise InputFileError(f"{what} '{path}' does not exist")
    if path.is_dir():
        raise InputFileError(f"{what} '{path}' is a directory, expected a file")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{what} '{path}' is not readable (permission denied)")
    return path


def check_writable_destination(dest: Path) -> None:
    """Fail early, before any expensive work, if ``dest`` cannot be created."""
    parent = dest.absolute().parent
    if not parent.exists():
        raise OutputError(f"output folder '{parent}' does not exist", hint="Create it first.")
    if not parent.is_dir():
        raise OutputError(f"'{parent}' is not a folder, cannot write '{dest.name}' into it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{parent}' is not writable")
    if dest.is_dir() and dest.suffix:
        raise OutputError(f"output path '{dest}' is an existing directory, expected a file name")


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds."""
    check_writable_destination(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.absolute().parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _publishable(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"could not write '{dest}': {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; swap it into place only if the block succeeds.

    An existing ``dest`` is replaced as a whole, so a reader never sees a mix of
    old and new files.
    """
    check_writable_destination(dest)
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"output path '{dest}' exists and is not a folder")
    parent = dest.absolute().parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        _publishable(tmp)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=parent))
            os.replace(dest, old / "previous")
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"could not write '{dest}': {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

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


def publishable(path: Path) -> None:
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
    if not path.is_file():  # a FIFO would block the read, /dev/zero would never end it
        raise InputFileError(f"{what} '{path}' is not a regular file (a device, FIFO or socket)")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{what} '{path}' is not readable (permission denied)")
    return path


def _absolute(path: Path) -> Path:
    """``path`` made absolute and normalised without following links: ``.`` gets its real name, so a
    staging name never starts ``..`` and never lands in the wrong folder."""
    return Path(os.path.abspath(path))


# Staging names add ".", "." and ".<pid>.<random>.tmp" (or ".previous") to an output's name: about 30 characters.
_STAGING_EXTRA = 32


def refuse_impossible_name(dest: Path) -> None:
    """Refuse a path the file system cannot hold (a component past NAME_MAX with room for the staging name,
    a whole past PATH_MAX, a NUL byte) with one line, before anything touches it."""
    text = os.fspath(dest)
    if "\x00" in text:
        raise OutputError("output path holds a NUL byte")
    absolute = os.path.abspath(text)
    try:
        name_max, path_max = os.pathconf(os.getcwd(), "PC_NAME_MAX"), os.pathconf(os.getcwd(), "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max(Path(absolute).parts, key=len)
    if len(longest.encode()) + _STAGING_EXTRA > name_max:
        raise OutputError(f"output path has a name of {len(longest.encode())} bytes ('{longest[:40]}...'); this "
                          f"file system allows {name_max}, and edgekiln needs {_STAGING_EXTRA} of them for its "
                          "temporary name", hint="Choose a shorter name.")
    if len(absolute.encode()) + _STAGING_EXTRA > path_max:
        raise OutputError(f"output path is {len(absolute.encode())} bytes long; paths on this system stop at "
                          f"{path_max}", hint="Choose a shorter path.")


def check_writable_destination(dest: Path) -> None:
    """Fail early, before any expensive work, if ``dest`` cannot be created or replaced."""
    refuse_impossible_name(dest)
    refuse_unreplaceable(dest)
    parent = _absolute(dest).parent
    if not parent.exists():
        raise OutputError(f"output folder '{parent}' does not exist", hint="Create it first.")
    if not parent.is_dir():
        raise OutputError(f"'{parent}' is not a folder, cannot write '{dest.name}' into it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output folder '{parent}' is not writable")
    if dest.is_dir() and dest.suffix:
        raise OutputError(f"output path '{dest}' is an existing directory, expected a file name")


def refuse_unreplaceable(dest: Path) -> None:
    """Refuse outputs that cannot be swapped into place: the current folder or one holding it (the user's
    shell would be left in a deleted folder) and mount points (rename(2) fails with EBUSY), before any work."""
    target, here = Path(os.path.realpath(dest)), Path(os.path.realpath(os.getcwd()))
    if target == here:
        raise OutputError(f"output '{dest}' is the current folder, and an output folder is replaced as a whole",
                          hint="Choose a new folder, e.g. -o edgekiln-out.")
    if target in here.parents:
        raise OutputError(f"output '{dest}' contains the current folder '{here}', and an output folder is replaced "
                          "as a whole", hint="Choose a new folder beside or below the current one.")
    if target.exists() and os.path.ismount(target):
        raise OutputError(f"output '{dest}' is a mount point, which cannot be replaced",
                          hint=f"Choose a folder inside it, e.g. -o {Path(dest) / 'edgekiln-out'}.")


def refuse_clobbering(dest: Path, sources: dict[str, Path | None]) -> None:
    """Refuse an output that is, or holds, something the command reads (``{"the source": path}``): the
    output replaces it, so the source model or its samples would be deleted."""
    target = Path(os.path.realpath(dest))
    for what, source in sources.items():
        if source is None:
            continue
        resolved = Path(os.path.realpath(source))
        if resolved == target and not target.is_dir():
            raise OutputError(f"output '{dest}' is {what} itself, which would be overwritten",
                              hint="Write to another file.")
        if target == resolved or target in resolved.parents:
            raise OutputError(f"output '{dest}' contains {what} '{source}', which replacing it would delete",
                              hint="Choose another output folder.")


@contextlib.contextmanager
def atomic_file(dest: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; rename it to ``dest`` only if the block succeeds."""
    check_writable_destination(dest)
    if dest.is_dir():
        raise OutputError(f"output path '{dest}' is an existing directory, expected a file name")
    dest = _absolute(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publishable(tmp)
        os.replace(tmp, dest)
    except OSError as exc:
        raise OutputError(f"could not write '{dest}': {exc.strerror or exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_staging(parent: Path, name: str) -> None:
    """Staging folders left by killed processes (SIGKILL skips clean-up) are removed by the next run.

    Only folders whose creating process is gone are touched, so a concurrent run's staging survives.
    """
    for candidate in parent.glob(f".{name}.*.tmp"):
        pid_text = candidate.name[len(name) + 2:].split(".", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)


@contextlib.contextmanager
def _swap_lock(parent: Path) -> Iterator[None]:
    """Serialise final swaps between processes writing into ``parent``.

    The folder itself is locked (flock works on directory descriptors), so no lock file is left
    among the user's outputs; swaps take milliseconds, so one lock per folder costs nothing.
    """
    import fcntl

    descriptor = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _swap(new: Path, dest: Path, previous: Path) -> None:
    """Put ``new`` at ``dest``, moving an existing ``dest`` to ``previous``, and back if the swap fails."""
    moved = dest.exists()
    if moved:
        os.replace(dest, previous)
    try:
        os.replace(new, dest)
    except OSError:
        if moved:
            os.replace(previous, dest)
        raise


@contextlib.contextmanager
def atomic_directory(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``dest``; swap it into place only if the block succeeds.

    An existing ``dest`` is replaced as a whole, so a reader never sees a mix of
    old and new files; concurrent writers of the same ``dest`` each swap in a
    complete folder, one after the other (the last one wins).
    """
    check_writable_destination(dest)
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"output path '{dest}' exists and is not a folder")
    shown, dest = dest, _absolute(dest)
    parent = dest.parent
    _remove_stale_staging(parent, dest.name)
    # One staging place per run: the new folder is built in it and the old one moved into it, so
    # whatever fails, removing it removes everything this run made.
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.{os.getpid()}.", suffix=".tmp", dir=parent))
    tmp = staging / "new"
    tmp.mkdir()
    try:
        yield tmp
        publishable(tmp)
        with _swap_lock(parent):
            _swap(tmp, dest, staging / "previous")
    except OSError as exc:
        raise OutputError(f"could not write '{shown}': {exc.strerror or exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


MAX_ARRAY_BYTES = 1 << 30
"""The largest array edgekiln allocates from one .npz member (or makes up as one input): far above any edge
model's input, far below what would exhaust a build machine's memory."""

_ZIP_MAGIC = b"PK\x03\x04"


def check_array_file(path: Path) -> None:
    """Refuse a ``.npy`` or ``.npz`` whose headers would make numpy allocate more than the file holds, more
    than ``MAX_ARRAY_BYTES`` (for compressed members), or unpickle objects, before numpy reads it.

    ``np.load`` trusts a header and allocates the declared array first (a 100-byte file can ask for
    100 GiB); it also opens any zip as an ``.npz``, whatever the name. Headers it cannot parse are left
    to np.load, which reports them.
    """
    import zipfile

    with open(path, "rb") as handle:
        is_zip = handle.read(4) == _ZIP_MAGIC
        if not is_zip:
            handle.seek(0)
            _check_npy_header(handle, os.fstat(handle.fileno()).st_size, f"'{path}'", limit=None)
            return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError):
        return
    with archive:
        for info in archive.infolist():
            with archive.open(info) as member:
                _check_npy_header(member, info.file_size,
                                  f"'{path}' member '{info.filename.removesuffix('.npy')}'", MAX_ARRAY_BYTES)


def _check_npy_header(handle, size: int, label: str, limit: int | None) -> None:
    """Check one array header read from ``handle`` (``size`` bytes in all, header included)."""
    import numpy as np
    from numpy.lib import format as npy_format

    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        reader = readers.get(npy_format.read_magic(handle))
        if reader is None:
            return
        shape, _fortran, dtype = reader(handle)
    except (ValueError, OSError, EOFError):
        return
    if dtype.hasobject:
        raise InputFileError(f"{label} holds pickled data (Python objects, dtype {dtype}), which could run code when "
                             "loaded; edgekiln reads only numeric arrays",
                             hint="Save the samples as a numeric array (np.save / np.savez).")
    declared = dtype.itemsize
    for dim in shape:
        declared *= int(dim)  # Python ints: huge dims must not wrap around
    described = f"an array of shape {tuple(shape)} ({np.dtype(dtype).name}, {declared:,} bytes)"
    if limit is not None and declared > limit:
        raise InputFileError(f"{label} declares {described}, more than the {limit >> 30} GiB edgekiln loads from "
                             "one array")
    available = size - handle.tell()
    if declared > available:
        raise InputFileError(f"{label} declares {described} but holds only {available:,} bytes of data: a damaged "
                             "or forged file")

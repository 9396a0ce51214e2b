"""Writing files so that a reader never sees half of one: ``atomic_write``.

Every file ``dip`` writes (images, reports, plots, checkpoints, batch summaries) goes through
``atomic_write``: the bytes go to a temporary file in the destination's folder, are flushed to
the disk (``fsync``) and the temporary file is renamed over the destination (``os.replace``,
atomic on POSIX and Windows within one file system). A crash or an exception at any point
leaves either the old file or the new one, never a mixture, and no temporary file behind.

The temporary file's name is short and fixed in form (``.dip-XXXXXXXX.tmp``, 17 characters),
so any destination name the file system accepts can be written: ``name_fits`` says whether it does.

The new file gets the permissions an ordinary ``open(path, "w")`` would give it, 0o666 less
the process's umask (``tempfile.mkstemp`` creates files 0o600, readable by their owner only).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "name_fits", "probe_folder", "TEMP_PREFIX", "TEMP_SUFFIX"]

#: the temporary file's name is TEMP_PREFIX + 8 random characters + TEMP_SUFFIX
TEMP_PREFIX = ".dip-"
TEMP_SUFFIX = ".tmp"
_DEFAULT_NAME_MAX = 255


def _umask() -> int:
    """The process's umask, read without changing it where the system tells it (Linux
    /proc/self/status); elsewhere set and restored at once (``os.umask`` only sets it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _name_max(folder: Path) -> int:
    """The longest file name (bytes) the file system of ``folder`` accepts (255 when unknown)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return _DEFAULT_NAME_MAX


def name_fits(path: str | os.PathLike) -> tuple[bool, int]:
    """Whether the file name of ``path`` (its last component, in the file system's encoding)
    is short enough for the file system of its folder, which must exist; and that limit (bytes)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    limit = _name_max(folder)
    return len(os.fsencode(path.name)) <= limit, limit


def probe_folder(folder: str | os.PathLike) -> None:
    """Create and remove one temporary file in ``folder``: the check that ``atomic_write`` can
    write there (``os.access`` says yes to root on a read-only file system).

    Raises:
        OSError: the folder is missing, not writable, on a read-only or full file system.
    """
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    os.close(fd)
    os.unlink(tmp)


def _sync_folder(folder: Path) -> None:
    """Flush the folder's entry of the renamed file to the disk, where the system allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, data: bytes | bytearray | memoryview | str, *,
                 encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns ``path`` as a Path.

    Args:
        path: the file to create or replace; its folder must exist.
        data: the whole content: bytes (written as they are) or str (encoded with
            ``encoding``, newlines untranslated).
        encoding: the text encoding of a str ``data``.

    The file's mode is 0o666 less the umask (0o644 under the usual umask 022), whether or not
    it existed before.

    Raises:
        OSError: the folder is missing or not writable, the disk is full, ...; ``path`` is
            then left as it was and no temporary file remains.
    """
    path = Path(path)
    payload = data.encode(encoding) if isinstance(data, str) else data
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=TEMP_SUFFIX, dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            if hasattr(os, "fchmod"):
                os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _sync_folder(folder)
    return path

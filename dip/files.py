"""Writing files so that a reader never sees half of one: ``atomic_write``.

Every file ``dip`` writes (images, reports, plots, checkpoints, batch summaries) goes through
``atomic_write``: the bytes go to a temporary file in the destination's folder, are flushed to
the disk (``fsync``) and the temporary file is renamed over the destination (``os.replace``,
atomic on POSIX and Windows within one file system). A crash or an exception at any point
leaves either the old file or the new one, never a mixture, and no temporary file behind.

The new file gets the permissions an ordinary ``open(path, "w")`` would give it, 0o666 less
the process's umask (``tempfile.mkstemp`` creates files 0o600, readable by their owner only).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
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

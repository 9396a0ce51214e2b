"""Writing a finished fit's files so that none is lost: ``Saver``.

Everything that can be checked is checked before the fit (``dip.cli.checks``,
``dip.cli.space``); a write can still fail after it (the disk filled up, the folder was made
read-only meanwhile). Then the file is written under its own name in the first fallback folder
that takes it (the folders of the run's other outputs, then the system's temporary folder),
and ``Saver.notes`` says where, so the command can tell the user and exit 1.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


def free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/STEM-N.SUFFIX`` with the first N that names no file yet."""
    target = folder / name
    stem, suffix = (name.split(".", 1) + [""])[:2] if not name.startswith(".") else (name, "")
    n = 1
    while target.exists():
        target = folder / (f"{stem}-{n}.{suffix}" if suffix else f"{stem}-{n}")
        n += 1
    return target


class Saver:
    """Writes files with fallbacks: ``write(what, path, write)`` calls ``write(path)`` and, when it
    raises OSError, ``write(other)`` for the same name in each fallback folder in turn.

    ``fallbacks``: folders to try, in order, after the file's own; the system's temporary
    folder (``tempfile.gettempdir()``) is always tried last.
    """

    def __init__(self, fallbacks: Iterable[Path]):
        folders: list[Path] = []
        for folder in [*fallbacks, Path(tempfile.gettempdir())]:
            if folder.resolve() not in [f.resolve() for f in folders]:
                folders.append(folder)
        self.fallbacks = folders
        #: one line per file that did not go where it was asked to
        self.notes: list[str] = []
        #: what -> the path it was written to (None: nowhere)
        self.written: dict[str, Path | None] = {}

    @property
    def failed(self) -> bool:
        """Whether any file went elsewhere or nowhere."""
        return bool(self.notes)

    def write(self, what: str, path: Path, write: Callable[[Path], object]) -> Path | None:
        """Write ``what`` to ``path`` with ``write(path)``, else to a fallback; returns where it went."""
        try:
            write(path)
            self.written[what] = path
            return path
        except OSError as exc:
            reason = exc.strerror or str(exc)
        for folder in self.fallbacks:
            if folder.resolve() == _folder(path).resolve():
                continue
            try:
                target = free_name(folder, path.name)
                write(target)
            except OSError:
                continue
            self.notes.append(f"could not write the {what} {path} ({reason}); saved it to {target}")
            self.written[what] = target
            return target
        self.notes.append(f"could not write the {what} {path} ({reason}), nor in any of "
                          f"{', '.join(str(f) for f in self.fallbacks)}")
        self.written[what] = None
        return None

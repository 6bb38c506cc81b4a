"""Output files: checked before any work, written atomically.

:func:`check_output` refuses a target that cannot be written (a folder, a
device such as ``/dev/full``, a file used as a folder, a read-only place) by
actually creating and removing a probe file next to it. :func:`atomic_write`
writes to a temporary file in the same folder and renames it into place, so
an interrupt or a full disk never leaves a truncated file or clobbers an
existing one.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from .validation import ParameterError

__all__ = ["OutputError", "check_output", "check_folder", "atomic_write"]

# Room left in a file name for the temporary name's prefix and suffix.
_NAME_MAX = 200


class OutputError(OSError):
    """An output file could not be written (disk full, removed folder, ...)."""


def _fail(flag: str, path: str | Path, reason: str) -> ParameterError:
    return ParameterError(flag, reason, message=f"{flag} {path}: {reason}")


def check_output(flag: str, path: str | Path) -> Path:
    """The resolved target of an output file, or :class:`ParameterError` naming ``flag``."""
    given = Path(path)
    if given.name in ("", ".", "..") or str(path).endswith(os.sep):
        what = "is a directory, " if given.is_dir() else ""
        raise _fail(flag, path, f"{what}give a file name")
    try:
        target = Path(os.path.realpath(given))  # write through a symlink, not over it
        if len(os.fsencode(target.name)) > _NAME_MAX:
            raise _fail(flag, path, f"file name longer than {_NAME_MAX} bytes")
        if target.exists() and not target.is_file():
            what = "is a directory" if target.is_dir() else "is not a regular file"
            raise _fail(flag, path, f"{what}, give a file name")
        _probe(flag, path, target.parent)
    except OSError as exc:
        raise _fail(flag, path, f"cannot write there ({exc.strerror or exc})") from None
    return target


def check_folder(flag: str, path: str | Path) -> Path:
    """A folder that files can be written into (created later if missing)."""
    try:
        folder = Path(os.path.realpath(path))
        if folder.exists() and not folder.is_dir():
            raise _fail(flag, path, "is not a folder")
        _probe(flag, path, folder)
    except OSError as exc:
        raise _fail(flag, path, f"cannot write there ({exc.strerror or exc})") from None
    return folder


def _probe(flag: str, path, folder: Path) -> None:
    """Create and remove a file in ``folder`` (or the nearest existing ancestor)."""
    existing = folder
    while not existing.exists():
        if existing.is_symlink() or existing.parent == existing:
            raise _fail(flag, path, f"folder {folder} cannot be created")
        existing = existing.parent
    if not existing.is_dir():
        raise _fail(flag, path, f"{existing} is not a folder")
    fd, probe = tempfile.mkstemp(dir=existing, prefix=".ctrlsim-probe-")
    os.close(fd)
    os.unlink(probe)


@contextlib.contextmanager
def atomic_write(path: str | Path, flag: str, mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On any exception (including ``KeyboardInterrupt``) the temporary file is
    removed and ``path`` is left as it was. A failed write raises
    :class:`OutputError` naming ``flag``.
    """
    target = Path(os.path.realpath(path))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                   suffix=".tmp")
    except OSError as exc:
        raise OutputError(f"{flag} {path}: cannot write ({exc.strerror or exc})") from None
    try:
        try:
            with os.fdopen(fd, mode, **kwargs) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, _mode_for(target))
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(f"{flag} {path}: cannot write ({exc.strerror or exc}); "
                              "nothing was written") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _mode_for(target: Path) -> int:
    """The existing file's permissions, else the usual ones for a new file."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask

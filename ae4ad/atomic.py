"""Atomic file writes: the one way ae4ad and the study write a file that a killed
process must not leave half-written.

:func:`atomic_write` creates a temporary file ``.<name>.<random>.tmp`` in the target's
folder, hands it to a writer, flushes and fsyncs it, then renames it over the target
with ``os.replace`` (atomic on POSIX and Windows within one file system) and fsyncs the
folder so that the rename survives a crash too. Readers see the old file or the new one,
never a part. If the writer raises, the temporary file is removed and the old file is
left as it was. The new file gets the mode of any newly created file (``0o666`` less
the process umask), not the private mode of :func:`tempfile.mkstemp`.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "sub" / "note.txt"
    >>> atomic_write_text(path, "first")
    >>> def broken(f):
    ...     f.write(b"half")
    ...     raise RuntimeError("disk on fire")
    >>> atomic_write(path, broken)
    Traceback (most recent call last):
    ...
    RuntimeError: disk on fire
    >>> path.read_text(), sorted(p.name for p in path.parent.iterdir())
    ('first', ['note.txt'])
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_SUFFIX", "atomic_write", "atomic_write_bytes", "atomic_write_text"]

TEMP_SUFFIX = ".tmp"
"""Temporary files are named ``.<target name>.<random hex>.tmp`` beside the target."""


def _open_temp(path: Path) -> tuple[BinaryIO, str]:
    """A new temporary file beside ``path``, created exclusively by ``open`` (mode 0o666
    less the umask, as for any new file)."""
    for _ in range(100):
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")
        try:
            return open(tmp, "xb"), tmp  # noqa: SIM115 - closed by atomic_write
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Replace ``path`` by what ``write(f)`` writes to a binary file ``f``, atomically.

    The folder is created if missing. ``write`` may be ``f.write`` of bytes, or any
    function taking a binary file (``np.savez``, ``torch.save``, ``DataFrame.to_parquet``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f, tmp = _open_temp(path)
    try:
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of ``data``."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))

"""ae4ad.atomic: the one atomic writer (temporary file, fsync, rename)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import ae4ad.atomic as atomic
from ae4ad.atomic import atomic_write, atomic_write_bytes, atomic_write_text


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_content_lands_and_replaces(tmp_path):
    path = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(path, b"one")
    assert path.read_bytes() == b"one"
    atomic_write_text(path, "zwei ✓")
    assert path.read_text(encoding="utf-8") == "zwei ✓"
    assert _names(path.parent) == ["f.bin"]


def test_writer_gets_a_binary_file(tmp_path):
    path = tmp_path / "arrays.npz"
    atomic_write(path, lambda f: np.savez(f, x=np.arange(5)))
    with np.load(path) as z:
        assert z["x"].tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_failing_writer_keeps_old_file_and_leaves_no_temp(tmp_path, exc):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")
    seen = []

    def broken(f):
        f.write(b"partial new content")
        seen.append(f.name)
        raise exc

    with pytest.raises(type(exc)):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["f.txt"]
    # The writer wrote to a temporary file beside the target, not to the target.
    assert Path(seen[0]).parent == tmp_path
    assert Path(seen[0]).name.startswith(".f.txt.")
    assert Path(seen[0]).name.endswith(atomic.TEMP_SUFFIX)


def test_failing_rename_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def no_replace(src, dst):
        raise OSError("read-only file system")

    monkeypatch.setattr(atomic.os, "replace", no_replace)
    with pytest.raises(OSError, match="read-only"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert _names(tmp_path) == ["f.txt"]


def test_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", None))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    atomic_write_text(tmp_path / "f.txt", "x")
    # the file's data first, then the rename, then (POSIX) the folder entry
    assert events[:2] == [("fsync", False), ("replace", None)]
    if os.name == "posix":
        assert events[2:] == [("fsync", True)]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_new_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(old)
    # as a plain open() would create it: 0o666 less the umask (mkstemp would give 0o600)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640


def test_taken_temporary_name_is_skipped(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    (tmp_path / ".f.txt.aaaaaaaa.tmp").write_text("another writer's")
    tokens = iter(["aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    atomic_write_text(path, "mine")
    assert path.read_text() == "mine"
    assert (tmp_path / ".f.txt.aaaaaaaa.tmp").read_text() == "another writer's"

"""dip.files.atomic_write: content, permissions under the umask, nothing partial left behind."""
from __future__ import annotations

import os
import stat
import sys

import pytest

from dip.files import atomic_write


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_writes_bytes_and_text(tmp_path):
    target = tmp_path / "a.bin"
    assert atomic_write(target, b"\x00\x01two") == target
    assert target.read_bytes() == b"\x00\x01two"
    atomic_write(target, "line one\r\nzwei \u00fc\n")  # text: encoded, newlines kept as given
    assert target.read_bytes() == "line one\r\nzwei \u00fc\n".encode("utf-8")
    assert os.listdir(tmp_path) == ["a.bin"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_new_and_replaced_files_take_the_umask(tmp_path, umask_022):
    fresh = tmp_path / "fresh.png"
    atomic_write(fresh, b"x")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o644
    old = tmp_path / "old.json"
    old.write_bytes(b"{}")
    old.chmod(0o600)
    atomic_write(old, b"[]")
    assert stat.S_IMODE(old.stat().st_mode) == 0o644 and old.read_bytes() == b"[]"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_bytes(b"original")

    with pytest.raises(TypeError):
        atomic_write(target, 12345)  # not bytes: the write raises after the temporary exists
    assert target.read_bytes() == b"original"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no" / "such.txt", b"x")
    assert os.listdir(tmp_path) == []

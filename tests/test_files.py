"""Atomic writes: complete files with ordinary permissions, nothing left behind on failure."""

import os
import stat

import pytest

from resnet_limits.files import write_atomically


def test_new_file_has_ordinary_permissions(tmp_path):
    path = tmp_path / "part.txt"

    write_atomically(path, lambda temporary: open(temporary, "w").write("rows"))

    assert path.read_text() == "rows"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert [entry.name for entry in tmp_path.iterdir()] == ["part.txt"]


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "part.txt"
    path.write_text("old")

    def fail(temporary):
        open(temporary, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)

    assert path.read_text() == "old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["part.txt"]

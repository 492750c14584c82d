"""Atomic writes: all-or-nothing, normal permissions."""
from __future__ import annotations

import os
import stat

import pytest

from meditok.utils.io import atomic_path, atomic_write_text


def test_atomic_write_replaces_whole_file_with_plain_permissions(tmp_path):
    target = tmp_path / "out" / "a.txt"
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]  # no temporary left


def test_failed_write_leaves_old_file_untouched(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]

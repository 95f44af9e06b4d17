"""The complete, smooth exported font (every source glyph kept, designed glyphs fitted with curves),
its file permissions, and the vector PDF sheet read back by ``a5ocr scan``."""

from __future__ import annotations

import os
import stat

import pytest

from a5ocr import runio


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        runio.write_bytes(tmp_path / "a.bin", b"x")
        runio.write_json(tmp_path / "b.json", {"k": 1})
        with runio.atomic_path(tmp_path / "c.txt") as tmp:
            assert stat.S_IMODE(tmp.stat().st_mode) == mode  # already while being written
            tmp.write_text("y")
    finally:
        os.umask(old)
    for name in ("a.bin", "b.json", "c.txt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.json", "c.txt"]  # no temporary left


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    (tmp_path / "f").write_text("old")
    with pytest.raises(RuntimeError):
        with runio.atomic_path(tmp_path / "f") as tmp:
            tmp.write_text("new")
            raise RuntimeError
    assert (tmp_path / "f").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]

"""data_tools/atomic.py: a replaced file is the old one or the whole new one, and nothing is left behind."""

from __future__ import annotations

import numpy as np
import pytest

from data_tools.atomic import write_atomic


def test_text_bytes_and_a_writer_function(tmp_path):
    write_atomic(tmp_path / "a" / "b.txt", "héllo\n")  # the directory is made
    assert (tmp_path / "a" / "b.txt").read_text() == "héllo\n"
    write_atomic(tmp_path / "c.bin", b"\x00\x01", fsync=True)
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    write_atomic(tmp_path / "d.npy", lambda f: np.save(f, np.arange(5)), unique=True)
    assert np.load(tmp_path / "d.npy").tolist() == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.txt", "c.bin", "d.npy"]


@pytest.mark.parametrize("unique", [False, True])
def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path, unique):
    path = tmp_path / "manifest.json"
    path.write_text("old")

    def half_then_fail(f):
        f.write(b"new, but only ha")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, half_then_fail, unique=unique)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]

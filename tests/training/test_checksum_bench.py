"""bench.checkpoint_checksum runs (a small size) and ends with its ratio against sha256sum; the sums it
times are the checkpoint's own."""

from __future__ import annotations

import zlib

from bench import checkpoint_checksum
from training.checkpoint import checksums, file_checksum


def test_checksum_bench_prints_the_ratio_last(tmp_path, capsys):
    assert (
        checkpoint_checksum.main(["--dir", str(tmp_path), "--gb", "0.004", "--files", "2", "--repeats", "1"])
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert "MB/s" in lines[1] and "sha256sum" in lines[1]
    assert lines[-1].startswith("ratio ours / sha256sum: ") and lines[-1].endswith("x")


def test_file_checksum_is_zlib_crc32_over_the_whole_file(tmp_path):
    data = bytes(range(256)) * 70_000  # more than one 8 MiB read
    (tmp_path / "f").write_bytes(data)
    assert file_checksum(tmp_path / "f") == f"{zlib.crc32(data):08x}"
    assert checksums([tmp_path / "f", tmp_path / "f"], threads=2) == [f"{zlib.crc32(data):08x}"] * 2

"""The MMIDIDX layout: exact bytes, round trips, interchange with Megatron-LM, corrupted shards."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from data_tools.errors import DataError
from data_tools.indexed_dataset import (
    MAGIC,
    IndexedDataset,
    IndexedDatasetWriter,
    token_dtype,
    write_dataset,
)
from data_tools.shards_cli import main


def test_header_bytes_of_a_tiny_known_dataset(tmp_path):
    write_dataset(tmp_path / "d", [np.array([5, 6, 7]), np.array([8, 9])], np.uint16)
    idx = (tmp_path / "d.idx").read_bytes()
    expected = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)  # version
        + struct.pack("<B", 8)  # uint16
        + struct.pack("<Q", 2)  # sequences
        + struct.pack("<Q", 3)  # doc_idx length
        + struct.pack("<2i", 3, 2)  # sizes
        + struct.pack("<2q", 0, 6)  # pointers in bytes
        + struct.pack("<3q", 0, 1, 2)  # doc_idx
    )
    assert idx == expected
    assert (tmp_path / "d.bin").read_bytes() == struct.pack("<5H", 5, 6, 7, 8, 9)


def test_round_trip_int32_and_batched_writes(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 100_000, n) for n in (1, 17, 0, 300)]
    writer = IndexedDatasetWriter(tmp_path / "d", token_dtype(100_000))
    writer.add_document(seqs[0])
    writer.add_documents(np.concatenate(seqs[1:]), np.array([len(s) for s in seqs[1:]]))
    info = writer.finalize()
    ds = IndexedDataset(tmp_path / "d")
    assert ds.dtype == np.int32 and len(ds) == 4 and ds.num_documents == 4
    assert info["tokens"] == sum(map(len, seqs)) and info["documents"] == 4
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(ds[i], s)
    np.testing.assert_array_equal(ds.get(3, offset=10, length=5), seqs[3][10:15])
    assert not list(tmp_path.glob("*.tmp"))


def test_dtype_choice():
    assert token_dtype(32768) == np.uint16 and token_dtype(65499) == np.uint16
    assert token_dtype(65500) == np.int32 and token_dtype(200_000) == np.int32


def test_megatron_reads_ours_and_we_read_megatrons(tmp_path):
    # Imported here, not at the top: only this test needs megatron-core (the dev extra installs it, so a
    # failed import fails the test).
    import torch
    from megatron.core.datasets import indexed_dataset as mg

    seqs = [np.array([1, 2, 3]), np.array([40000, 5]), np.array([7])]
    write_dataset(tmp_path / "ours", seqs, np.uint16)
    theirs = mg.IndexedDataset(str(tmp_path / "ours"))
    assert len(theirs) == 3
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(theirs[i], s)
    np.testing.assert_array_equal(theirs.document_indices, [0, 1, 2, 3])

    builder = mg.IndexedDatasetBuilder(str(tmp_path / "mg.bin"), dtype=np.int32)
    for s in seqs:
        builder.add_document(torch.tensor(s), [len(s)])
    builder.finalize(str(tmp_path / "mg.idx"))
    ours = IndexedDataset(tmp_path / "mg")
    assert ours.dtype == np.int32
    for i, s in enumerate(seqs):
        np.testing.assert_array_equal(ours[i], s)
    # Same layout: for the same dtype the index bytes are identical.
    write_dataset(tmp_path / "ours32", seqs, np.int32)
    assert (tmp_path / "ours32.idx").read_bytes() == (tmp_path / "mg.idx").read_bytes()


@pytest.fixture
def shard(tmp_path):
    write_dataset(tmp_path / "s", [np.arange(10), np.arange(5)], np.uint16)
    return tmp_path / "s"


def _expect_error(prefix, *fragments):
    with pytest.raises(DataError) as e:
        IndexedDataset(prefix)
    msg = str(e.value)
    for frag in fragments:
        assert frag in msg, msg
    assert "codeparrot-preprocess" in msg  # names the command that regenerates it
    return msg


def test_bad_magic(shard):
    idx = shard.with_suffix(".idx")
    data = bytearray(idx.read_bytes())
    data[:9] = b"NOTANIDX!"
    idx.write_bytes(bytes(data))
    _expect_error(shard, str(idx), "bad magic")


def test_truncated_bin(shard):
    b = shard.with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:-4])
    _expect_error(shard, str(b), "truncated", "26 bytes", "30 bytes")


def test_idx_and_bin_disagree(shard, tmp_path):
    write_dataset(tmp_path / "other", [np.arange(11), np.arange(5)], np.uint16)
    shard.with_suffix(".bin").write_bytes((tmp_path / "other.bin").read_bytes())
    _expect_error(shard, "longer than its index says")


def test_unknown_dtype(shard):
    idx = shard.with_suffix(".idx")
    data = bytearray(idx.read_bytes())
    data[17] = 42
    idx.write_bytes(bytes(data))
    _expect_error(shard, str(idx), "unknown dtype code 42")


def test_truncated_idx_and_missing_bin(shard):
    idx = shard.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:40])
    _expect_error(shard, "does not match its header")
    idx.write_bytes(MAGIC)
    _expect_error(shard, "truncated index")
    shard.with_suffix(".bin").unlink()
    _expect_error(shard, "file not found")


def test_cli_validates(shard, capsys):
    assert main([str(shard)]) == 0
    assert '"tokens": 15' in capsys.readouterr().out
    shard.with_suffix(".bin").write_bytes(b"")
    assert main([str(shard)]) == 1
    assert "truncated" in capsys.readouterr().err

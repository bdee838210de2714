"""A dataset whose verification takes longer than the collective timeout still starts training: the shards
are hashed before the process group exists, once for both ranks."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from data_tools.indexed_dataset import IndexedDatasetWriter
from data_tools.manifest import MANIFEST, VERIFIED

from .conftest import check, deepspeed_cmd, run, run_config, single_cmd

TIMEOUT_S = 5  # train.dist_timeout_s of the run: every collective of the run may wait this long
SHARD_GB = 1.5
SHARDS = 4  # 6 GB, read cold at about 600 MB/s here: about 10 s of hashing


def add_large_split(data: Path, vocab: int) -> int:
    """Add a `test` split of SHARDS shards of random token ids (below `vocab`) to the dataset at `data`,
    written with the shard writer and evicted from the page cache, so verifying reads them from disk.
    Returns its bytes."""
    chunk = np.random.default_rng(0).integers(0, vocab, size=32 << 20, dtype=np.uint16)  # 64 MiB
    shards = []
    for i in range(SHARDS):
        writer = IndexedDatasetWriter(data / f"test_{i:05d}", np.uint16)
        for _ in range(int(SHARD_GB * 2**30) // chunk.nbytes):
            writer.add_documents(chunk, np.full(32, len(chunk) // 32))
        shards.append({"prefix": f"test_{i:05d}", **writer.finalize()})
        fd = os.open(data / f"test_{i:05d}.bin", os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    manifest = json.loads((data / MANIFEST).read_text())
    tokens = sum(s["tokens"] for s in shards)
    manifest["splits"]["test"] = {
        "shards": shards,
        "tokens": tokens,
        "documents": sum(s["documents"] for s in shards),
    }
    (data / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return tokens * 2


def test_verification_longer_than_the_collective_timeout_starts_training(tiny_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    (data / VERIFIED).unlink(missing_ok=True)
    vocab = json.loads((data / MANIFEST).read_text())["tokenizer"]["vocab_size"]
    total = add_large_split(data, vocab)
    try:
        cfg = run_config(tmp_path, data, max_steps=2, eval_interval=0, dist_timeout_s=TIMEOUT_S)
        result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path, timeout=600))
        assert "step 2/2" in result.stdout
        # One process hashed every file, for longer than the timeout: one bar over all the bytes (a second
        # hashing would start another bar at 0%).
        bar = re.findall(rf"verify {re.escape(str(data))}:\s+(\d+)%[^\r\n]*\[(\d+):(\d+)<", result.stderr)
        percents = [int(p) for p, _, _ in bar]
        assert percents and percents == sorted(percents) and percents[-1] == 100, result.stderr[-3000:]
        assert 60 * int(bar[-1][1]) + int(bar[-1][2]) > TIMEOUT_S, bar[-1]
        record = json.loads((data / VERIFIED).read_text())["files"]
        assert sum(e["size"] for n, e in record.items() if n.startswith("test_")) >= total
        assert not list(data.glob(".verify.claim*")) and not list(data.glob("*.tmp"))
    finally:
        shutil.rmtree(data, ignore_errors=True)  # 6 GB


def test_a_truncated_shard_without_verification_is_named_before_any_engine(tiny_data, tmp_path):
    """--no-verify-data skips the hashing, not the checks that read no tokens."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    shard = data / "train_00000.bin"
    size = shard.stat().st_size
    os.truncate(shard, size - 2)
    cfg = run_config(tmp_path, data, max_steps=2)
    result = run(single_cmd(cfg, "zero2_cpu.json", "--no-verify-data"), tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        f"  - {shard}: {size - 2} bytes, manifest.json records {size} (shard train_00000 of the train "
        "split)\nHINT: regenerate the dataset with `codeparrot-preprocess"
    ) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "ckpt" / "run_config.json").exists()  # refused before the run started

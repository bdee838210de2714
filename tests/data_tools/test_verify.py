"""Shards against their manifest: sha256 and sizes, a record that spares re-hashing unchanged files, and
codeparrot-shards reporting a flipped bit."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from data_tools import atomic, hashing
from data_tools import manifest as manifest_mod
from data_tools.errors import DataError
from data_tools.manifest import MANIFEST, VERIFIED, load_manifest, sha256_file, verify_dataset
from data_tools.parallel import CleanConfig
from data_tools.preprocess import PreprocessConfig, preprocess
from data_tools.shards_cli import main as shards_main
from data_tools.sources import SourceConfig

from .conftest import code_doc, write_jsonl


@pytest.fixture
def dataset(tmp_path, small_tokenizer):
    """A small dataset of several shard pairs."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"content": code_doc(i)} for i in range(200)])
    out = tmp_path / "data"
    cfg = PreprocessConfig(
        sources=SourceConfig(inputs=(str(inp),)),
        output=out,
        tokenizer=small_tokenizer,
        clean=CleanConfig(valid_ratio=0.1),
        shard_tokens=4000,
        show_progress=False,
    )
    m = preprocess(cfg)
    assert len(m["splits"]["train"]["shards"]) >= 3 and (out / "valid_00000.bin").exists()
    return out


@pytest.fixture
def hashed(monkeypatch):
    """The names of the files verify_dataset hashes, in order."""
    names: list[str] = []

    def counting(path, on_read=lambda n: None):
        names.append(path.name)
        return sha256_file(path, on_read)

    monkeypatch.setattr(manifest_mod, "sha256_file", counting)
    return names


def flip_bit(path, offset=None):
    """Flip one bit in the middle of `path`, in place (same size, same inode)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2 if offset is None else offset)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x10]))


def shard_files(data_dir):
    m = load_manifest(data_dir)
    return sorted(
        s["prefix"] + e for v in m["splits"].values() for s in v["shards"] for e in (".bin", ".idx")
    )


def test_flipped_bit_in_a_bin_fails_codeparrot_shards_naming_shard_hashes_and_fix(dataset, capsys):
    assert shards_main([str(dataset), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert len(out.splitlines()) == len(shard_files(dataset)) // 2 and '"tokens"' in out
    target = dataset / "train_00001.bin"
    expected = next(
        s["sha256"]
        for s in load_manifest(dataset)["splits"]["train"]["shards"]
        if s["prefix"] == "train_00001"
    )
    flip_bit(target)
    actual = sha256_file(target)
    for path in (dataset, dataset / "train_00001", dataset / "train_00001.bin"):
        assert shards_main([str(path), "--quiet"]) == 1  # a check failed
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: {target}: sha256 {actual}, but manifest.json records {expected} "
            "(shard train_00001 of the train split): the file is corrupt or was changed\n"
        )
        assert (
            f"HINT: regenerate the dataset with `codeparrot-preprocess --input {dataset.parent / 'in.jsonl'} "
            f"--tokenizer "
            in err
            and f"--output {dataset} --overwrite`" in err
        )
    # Other shards pass on their own; --no-verify keeps only the layout checks, which a flipped bit passes.
    assert shards_main([str(dataset / "train_00000"), "--quiet"]) == 0
    assert shards_main([str(dataset), "--quiet", "--no-verify"]) == 0


def test_a_second_verification_hashes_nothing_and_a_touched_file_is_hashed_again(dataset, hashed):
    files = shard_files(dataset)
    verify_dataset(dataset, progress=False)
    assert sorted(hashed) == files
    record = json.loads((dataset / VERIFIED).read_text())["files"]
    assert sorted(record) == files
    assert set(record[files[0]]) == {"size", "mtime_ns", "ctime_ns", "ino", "sha256"}

    hashed.clear()
    verify_dataset(dataset, progress=False)
    assert hashed == []

    st = (dataset / "valid_00000.idx").stat()
    os.utime(dataset / "valid_00000.idx", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    verify_dataset(dataset, progress=False)
    assert hashed == ["valid_00000.idx"]

    hashed.clear()
    flip_bit(dataset / "train_00000.bin")  # a change of content changes the mtime too
    with pytest.raises(DataError, match=r"train_00000\.bin: sha256 .* the file is corrupt"):
        verify_dataset(dataset, progress=False)
    assert hashed == ["train_00000.bin"]
    hashed.clear()  # the record remembers the bad hash: the error comes back without hashing
    with pytest.raises(DataError, match=r"train_00000\.bin: sha256"):
        verify_dataset(dataset, progress=False)
    assert hashed == []


def test_verification_without_a_writable_record_still_verifies(dataset, hashed, caplog):
    (dataset / VERIFIED).mkdir()  # the record cannot be written (nor read) there
    verify_dataset(dataset, progress=False)
    verify_dataset(dataset, progress=False)
    assert len(hashed) == 2 * len(shard_files(dataset))
    assert "the next verification hashes the shards again" in caplog.text
    assert not list(dataset.glob(f"{VERIFIED}.*.tmp"))
    flip_bit(dataset / "train_00000.idx")
    with pytest.raises(DataError, match=r"train_00000\.idx: sha256"):
        verify_dataset(dataset, progress=False)


def test_a_corrupt_record_is_ignored(dataset, hashed):
    (dataset / VERIFIED).write_text("{not json")
    verify_dataset(dataset, progress=False)
    assert len(hashed) == len(shard_files(dataset))
    hashed.clear()
    verify_dataset(dataset, progress=False)
    assert hashed == []


def test_missing_truncated_and_changed_files_are_all_reported_at_once(dataset, hashed):
    (dataset / "train_00000.bin").unlink()
    b = dataset / "train_00001.bin"
    b.write_bytes(b.read_bytes()[:-2])
    flip_bit(dataset / "valid_00000.idx", offset=40)
    with pytest.raises(DataError) as e:
        verify_dataset(dataset, progress=False)
    lines = str(e.value).splitlines()
    assert (
        lines[0]
        == f"{dataset / 'train_00000.bin'}: No such file or directory (shard train_00000 of the train split)"
    )
    assert lines[1].startswith(f"{b}: {b.stat().st_size} bytes, manifest.json records {b.stat().st_size + 2}")
    assert lines[2].startswith(f"{dataset / 'valid_00000.idx'}: sha256 ")
    assert lines[3].startswith("HINT: regenerate the dataset") and len(lines) == 4
    assert "train_00000.bin" not in hashed and "train_00001.bin" not in hashed  # no need to hash those


def test_manifests_without_index_hashes_are_checked_by_layout_and_counts(dataset):
    path = dataset / MANIFEST
    m = json.loads(path.read_text())
    for split in m["splits"].values():
        for shard in split["shards"]:
            for key in ("bin_bytes", "idx_sha256", "idx_bytes"):
                del shard[key]
    path.write_text(json.dumps(m))
    verify_dataset(dataset, progress=False)
    idx = dataset / "train_00000.idx"
    data = bytearray(idx.read_bytes())
    data[-8:] = (12345).to_bytes(8, "little")  # the last doc_idx entry
    idx.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train_00000\.idx: doc_idx must rise from 0"):
        verify_dataset(dataset, progress=False)


def test_progress_bar_over_bytes(dataset, capsys):
    verify_dataset(dataset)
    err = capsys.readouterr().err
    assert f"verify {dataset}" in err and "B/s" in err
    verify_dataset(dataset)  # nothing to hash: no bar
    assert capsys.readouterr().err == ""


def test_a_rewrite_keeping_size_and_mtime_is_hashed_again_and_caught(dataset, hashed):
    """`cp -p` or `rsync --inplace` rewrite a file and restore its mtime; the change time still moves."""
    verify_dataset(dataset, progress=False)
    hashed.clear()
    target = dataset / "train_00001.bin"
    st = target.stat()
    flip_bit(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_mtime_ns, target.stat().st_ino) == (
        st.st_size,
        st.st_mtime_ns,
        st.st_ino,
    )
    with pytest.raises(DataError, match=r"train_00001\.bin: sha256 .* the file is corrupt or was changed"):
        verify_dataset(dataset, progress=False)
    assert hashed == ["train_00001.bin"]


def _verify_in_thread(dataset):
    errors: list[BaseException] = []

    def target():
        try:
            verify_dataset(dataset, progress=False)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, errors


def test_a_live_claim_makes_verification_wait_then_nothing_is_hashed_twice(dataset, hashed):
    """Another process (here: one of another host) is hashing: this one waits for its record instead of
    reading the same bytes again, and a claim that is refreshed is never taken over."""
    claim = dataset / hashing.CLAIM
    claim.write_text(json.dumps({"host": "another-host", "pid": 1, "started": time.time()}))
    thread, errors = _verify_in_thread(dataset)
    for _ in range(10):
        time.sleep(0.2)
        os.utime(claim)  # the holder's heartbeat
    assert thread.is_alive() and hashed == [] and not (dataset / VERIFIED).exists()
    # The holder finishes: its record holds every file; then it removes the claim.
    names = shard_files(dataset)
    hashing.save_record(
        dataset / VERIFIED,
        {n: hashing.file_key(dataset / n) | {"sha256": sha256_file(dataset / n)} for n in names},
    )
    claim.unlink()
    thread.join(10)
    assert not thread.is_alive() and errors == [] and hashed == []


def test_an_abandoned_claim_is_taken_over(dataset, hashed, monkeypatch):
    """A claim of a dead process of this host is taken over at once; one from another host when it has
    not moved for STALE_S."""
    claim = dataset / hashing.CLAIM
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}))
    verify_dataset(dataset, progress=False)
    assert sorted(hashed) == shard_files(dataset) and not claim.exists()

    hashed.clear()
    (dataset / VERIFIED).unlink()
    monkeypatch.setattr(hashing, "STALE_S", 1.0)
    claim.write_text(json.dumps({"host": "another-host", "pid": 1, "started": 0}))
    started = time.monotonic()
    verify_dataset(dataset, progress=False)
    assert 1.0 <= time.monotonic() - started < 10
    assert sorted(hashed) == shard_files(dataset) and not claim.exists()


def test_temporary_record_names_are_unique_across_hosts(tmp_path):
    names = {atomic.unique_tmp(tmp_path / VERIFIED).name for _ in range(20)}
    assert len(names) == 20
    assert all(n.startswith(f"{VERIFIED}.{socket.gethostname()}.{os.getpid()}.") for n in names)


def test_files_are_hashed_on_several_threads_at_disk_speed(tmp_path):
    paths = []
    for i in range(4):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(os.urandom(1 << 22) * 4)
    threads: set[str] = set()
    read: list[int] = []

    def sha(path, on_read):
        threads.add(threading.current_thread().name)
        time.sleep(0.2)  # every worker is busy at once
        return sha256_file(path, on_read)

    out = hashing.hash_files(paths, read.append, workers=4, sha=sha)
    assert out == {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    assert len(threads) == 4 and sum(read) == 4 * (1 << 24)

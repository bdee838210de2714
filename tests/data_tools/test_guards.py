"""The data tools refuse, in one line with exit status 2, what would lose data or fail late: writing over
their own inputs, impossible sizes, two jobs in one output directory; and shard damage is named."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from data_tools import preprocess, train_tokenizer
from data_tools.errors import DataError
from data_tools.indexed_dataset import HEADER_SIZE, REGENERATE_HINT, write_dataset
from data_tools.manifest import MANIFEST, check_shards, verify_dataset
from data_tools.shards_cli import main as shards_main

from .conftest import code_doc, write_jsonl
from .test_tools import run_tool

ROOT = Path(__file__).resolve().parents[2]

DOCS = [{"content": code_doc(i)} for i in range(30)]


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_clean_refuses_to_write_over_its_input(tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", DOCS + [{"content": "x = 1\n"}])  # one record is dropped
    before = digest(data)
    assert run_tool("clean", [data], data) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: --output {data} is the input {data}: writing it would destroy the data being read. "
        "Choose an --output outside the inputs.\n"
    )
    assert digest(data) == before
    link = tmp_path / "link.jsonl"
    os.link(data, link)  # the same file under another name
    assert run_tool("clean", [data], link) == 2
    assert f"--output {link} is the input {data}" in capsys.readouterr().err
    assert run_tool("clean", [data], tmp_path / "o.jsonl", "--report", str(data)) == 2
    assert f"error: --report {data} is the input {data}" in capsys.readouterr().err
    assert digest(data) == before


@pytest.mark.parametrize("tool", ["train", "preprocess"])
def test_an_output_directory_holding_an_input_is_refused(tool, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    data = write_jsonl(out / "corpus.jsonl", DOCS)
    before = digest(data)
    assert run_tool(tool, [data], out) == 2
    assert capsys.readouterr().err == (
        f"error: --output {out} contains the input {data}: writing it would destroy the data being read. "
        "Choose an --output outside the inputs.\n"
    )
    assert run_tool(tool, [out], out) == 2  # a source tree that is the output directory
    assert f"error: --output {out} is the input {out}" in capsys.readouterr().err
    assert digest(data) == before and sorted(p.name for p in out.iterdir()) == ["corpus.jsonl"]


def test_preprocess_overwrite_refuses_a_tokenizer_inside_the_output(tmp_path, capsys, small_tokenizer):
    import shutil

    data = write_jsonl(tmp_path / "in.jsonl", DOCS)
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(small_tokenizer, out / "tokenizer")
    args = ("--tokenizer", str(out / "tokenizer"), "--overwrite")
    assert run_tool("preprocess", [data], out, *args) == 2
    assert f"error: --output {out} contains the input {out / 'tokenizer'}" in capsys.readouterr().err
    assert (out / "tokenizer" / "tokenizer.json").exists()


@pytest.mark.parametrize("tool", ["train", "preprocess"])
@pytest.mark.parametrize("size", [0, 256, 2**31])
def test_vocabulary_sizes_outside_what_can_be_trained_or_stored(tool, size, tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", DOCS)
    main = {"train": train_tokenizer.main, "preprocess": preprocess.main}[tool]
    args = ["--input", str(data), "--output", str(tmp_path / "out"), "--quiet", "--vocab-size", str(size)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        f"error: --vocab-size ({size}) must be between 261 (the 256 bytes of the byte-level alphabet and the "
        "5 special tokens) and 2,147,483,647 (the largest id an int32 shard holds); 32768 is the usual "
        "choice" + ("." if tool == "preprocess" else "") + "\n"
    )
    assert not (tmp_path / "out").exists()


def test_zero_shard_tokens_is_refused(tmp_path, capsys):
    data = write_jsonl(tmp_path / "in.jsonl", DOCS)
    assert run_tool("preprocess", [data], tmp_path / "out", "--shard-tokens", "0") == 2
    assert capsys.readouterr().err == (
        "error: --shard-tokens (0) must be at least 1 (tokens per shard; the default is 268,435,456).\n"
    )
    assert not (tmp_path / "out").exists()


def test_an_index_whose_pointers_do_not_start_at_0_is_named(tmp_path, capsys):
    prefix = tmp_path / "shard"
    write_dataset(prefix, [np.arange(5), np.arange(7), np.arange(3)], np.uint16)
    idx = tmp_path / "shard.idx"
    raw = bytearray(idx.read_bytes())
    n = 3
    start = HEADER_SIZE + 4 * n
    pointers = np.frombuffer(bytes(raw[start : start + 8 * n]), dtype=np.int64) + 2  # one token later
    raw[start : start + 8 * n] = pointers.tobytes()
    idx.write_bytes(bytes(raw))
    assert shards_main([str(prefix), "--no-verify", "--quiet"]) == 1  # the shard fails a check
    err = capsys.readouterr().err
    assert err == (
        f"error: {idx}: the first sequence's pointer is 2, not 0: the index does not describe shard.bin from "
        f"its start (an index cut from a larger one, or damaged). {REGENERATE_HINT}\n"
    )


def test_token_ids_at_or_above_the_vocabulary_are_named(tmp_path, small_tokenizer):
    data = write_jsonl(tmp_path / "in.jsonl", DOCS)
    out = tmp_path / "out"
    assert run_tool("preprocess", [data], out, "--tokenizer", str(small_tokenizer)) == 0
    m = json.loads((out / MANIFEST).read_text())
    shard = m["splits"]["train"]["shards"][0]
    assert 255 < shard["max_token"] < 600  # recorded at write time
    check_shards(out, 600)
    # A shard written by another tool, with ids of a larger vocabulary; its sizes and hashes consistent.
    info = write_dataset(out / shard["prefix"], [np.array([5, 700, 9]), np.array([1, 2])], np.uint16)
    shard.update(info, tokens=5, documents=2)
    (out / MANIFEST).write_text(json.dumps(m))
    verify_dataset(out, progress=False)  # every hash matches: only the ids are wrong
    bad = out / f"{shard['prefix']}.bin"
    with pytest.raises(DataError) as e:
        check_shards(out, 1024)
    assert str(e.value).splitlines()[0] == (
        f"{bad}: holds token id 700 (recorded in manifest.json), but its tokenizer has 600 ids (0-599): the "
        "shard was not tokenized with the tokenizer its manifest names"
    )
    with pytest.raises(DataError, match=r"but the model's vocabulary has 650 ids \(0-649\)"):
        check_shards(out, 650)
    assert "HINT: regenerate the dataset" in str(e.value)


def test_a_second_job_on_one_output_directory_refuses_naming_the_holder(tmp_path, capsys):
    """A real first job holds the lock while it runs; a second one refuses in one line; once the first is
    killed (SIGKILL: no clean-up), the lock it left is taken over."""
    corpus = write_jsonl(tmp_path / "in.jsonl", [{"content": code_doc(i) * 40} for i in range(3000)])
    out = tmp_path / "out"
    first = subprocess.Popen(
        [sys.executable, "-m", "data_tools.preprocess", "--input", str(corpus), "--output", str(out)]
        + ["--vocab-size", "2000", "--workers", "1", "--quiet"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        lock = out / ".lock"
        deadline = time.monotonic() + 60
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), first.stderr.read().decode() if first.poll() is not None else "no lock"
        assert run_tool("preprocess", [corpus], out) == 2
        err = capsys.readouterr().err
        assert err.startswith(
            f"error: --output {out}: another job is writing this directory (pid {first.pid} on "
            f"{socket.gethostname()}, since "
        )
        assert err.endswith(
            f"; lock {lock}). Wait for it to end or choose another --output; if no such job runs, delete "
            f"{lock}.\n"
        )
        assert first.poll() is None  # the second job did not disturb the first
    finally:
        first.kill()
        first.wait()
    assert lock.exists()  # left by the killed job
    assert run_tool("preprocess", [corpus], out) == 0  # a dead holder of this host: taken over
    assert not lock.exists() and (out / MANIFEST).exists()

"""The data tools refuse, in one line with exit status 2, what would lose data or fail late: writing over
their own inputs, impossible sizes, two jobs in one output directory; and shard damage is named."""

from __future__ import annotations

import hashlib
import os

import pytest

from .conftest import code_doc, write_jsonl
from .test_tools import run_tool

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

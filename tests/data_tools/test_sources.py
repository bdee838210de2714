"""Every input format, and every kind of bad input: counted with its location, never fatal."""

from __future__ import annotations

import gzip
import json

import pytest

from data_tools.errors import DataError
from data_tools.sources import (
    Problems,
    SourceConfig,
    expand_inputs,
    iter_documents,
    stdlib_dir,
)

from .conftest import code_doc, write_jsonl


def read(inputs, **kw):
    problems = Problems()
    docs = list(iter_documents(SourceConfig(inputs=tuple(map(str, inputs)), **kw), problems))
    return docs, problems


def test_jsonl_plain_gz_zst_parquet_and_hf_dataset_give_the_same_documents(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    texts = [code_doc(i) for i in range(5)]
    lines = "".join(json.dumps({"content": t, "repo": "r"}) + "\n" for t in texts).encode()
    (tmp_path / "a.jsonl").write_bytes(lines)
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as f:
        f.write(lines)
    (tmp_path / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"content": texts}), tmp_path / "d.parquet", row_group_size=2)
    datasets.Dataset.from_dict({"content": texts}).save_to_disk(str(tmp_path / "hf"))
    for name in ("a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet", "hf"):
        docs, problems = read([tmp_path / name])
        assert [d.text for d in docs] == texts, name
        assert not problems.counts, name
    docs, _ = read([tmp_path / "a.jsonl"])
    assert docs[2].location == f"{tmp_path / 'a.jsonl'}:3"


def test_text_field_is_configurable(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"code": "x = 1"}])
    docs, problems = read([tmp_path / "a.jsonl"], text_field="code")
    assert [d.text for d in docs] == ["x = 1"] and not problems.counts


def test_source_tree_with_extensions_and_skipped_dirs(tmp_path):
    (tmp_path / "pkg" / "site-packages").mkdir(parents=True)
    (tmp_path / "pkg" / "m.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "n.js").write_text("var a = 1;\n")
    (tmp_path / "pkg" / "site-packages" / "dep.py").write_text("b = 2\n")
    docs, _ = read([tmp_path])
    assert [d.text for d in docs] == ["a = 1\n"]
    docs, _ = read([tmp_path], extensions=(".py", ".js"))
    assert sorted(d.text for d in docs) == ["a = 1\n", "var a = 1;\n"]


def test_default_corpus_is_the_standard_library():
    files = expand_inputs(SourceConfig())
    assert len(files) > 1000
    assert all(str(p).startswith(stdlib_dir()) and "site-packages" not in str(p) for _, p in files)


def test_bad_jsonl_records_are_counted_with_file_and_line_and_good_ones_kept(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = [code_doc(i) for i in range(3)]
    with open(path, "wb") as f:
        f.write(json.dumps({"content": good[0]}).encode() + b"\n")
        f.write(b'{"content": "unterminated\n')  # line 2: malformed JSON
        f.write(b'{"content": "caf\xe9"}\n')  # line 3: not UTF-8
        f.write(json.dumps({"content": "   \n"}).encode() + b"\n")  # line 4: empty document
        f.write(json.dumps({"text": good[1]}).encode() + b"\n")  # line 5: missing field
        f.write(json.dumps({"content": 42}).encode() + b"\n")  # line 6: not a string
        f.write(json.dumps({"content": "x" * 2_000_000}).encode() + b"\n")  # line 7: too large
        f.write(b"\n")  # blank line: not a record, not a problem
        f.write(json.dumps({"content": good[2]}).encode() + b"\n")  # line 9
    docs, problems = read([path])
    assert [d.text for d in docs] == [good[0], good[2]]
    assert [d.line for d in docs] == [1, 9]
    assert dict(problems.counts) == {
        "malformed_json": 1,
        "non_utf8": 1,
        "empty_document": 1,
        "missing_text_field": 2,
        "too_large": 1,
    }
    assert problems.examples["malformed_json"][0].startswith(f"{path}:2")
    assert problems.examples["non_utf8"][0].startswith(f"{path}:3")
    assert problems.examples["too_large"][0].startswith(f"{path}:7")


def test_bad_source_files(tmp_path):
    (tmp_path / "ok.py").write_text(code_doc(0))
    (tmp_path / "latin1.py").write_bytes("# caf\xe9\nx = 1\n".encode("latin-1"))
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "huge.py").write_text("x = 1\n" * (50 * 2**20 // 6))  # a 50 MB single file
    docs, problems = read([tmp_path])
    assert [d.text for d in docs] == [code_doc(0)]
    assert dict(problems.counts) == {"non_utf8": 1, "empty_document": 1, "too_large": 1}
    assert str(tmp_path / "huge.py") in problems.examples["too_large"][0]


def test_truncated_gzip_keeps_what_was_read(tmp_path):
    data = gzip.compress("".join(json.dumps({"content": code_doc(i)}) + "\n" for i in range(200)).encode())
    (tmp_path / "t.jsonl.gz").write_bytes(data[: len(data) // 2])
    docs, problems = read([tmp_path / "t.jsonl.gz"])
    assert 0 < len(docs) < 200 and problems.counts["unreadable_file"] == 1


def test_missing_column_in_parquet_and_unknown_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "p.parquet")
    docs, problems = read([tmp_path / "p.parquet"])
    assert not docs and "columns: ['text']" in problems.examples["missing_text_field"][0]
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"data\.csv: unknown input format"):
        read([tmp_path / "data.csv"])
    with pytest.raises(DataError, match="not found: .*nope"):
        read([tmp_path / "nope.jsonl"])

"""Every input format, and every kind of bad input: counted with its location, never fatal."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

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
    assert 0 < len(docs) < 200 and dict(problems.counts) == {"truncated": 1}


def test_damaged_hf_dataset_is_reported_and_reading_goes_on(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_info.json").write_text("{}")
    (tmp_path / "hf" / "state.json").write_text("{broken")
    write_jsonl(tmp_path / "a.jsonl", [{"content": code_doc(1)}])
    docs, problems = read([tmp_path / "hf", tmp_path / "a.jsonl"])
    assert [d.text for d in docs] == [code_doc(1)]
    assert problems.counts == {"unreadable_file": 1}
    assert problems.examples["unreadable_file"][0].startswith(f"{tmp_path / 'hf'}: ")


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


def _jsonl_bytes(texts) -> bytes:
    return "".join(json.dumps({"content": t}) + "\n" for t in texts).encode()


def _assert_prefix_kept_and_cut_reported(path, docs, problems, total):
    """The documents read are the file's first ones, whole and in order, and the cut is reported with the
    line where reading stopped."""
    texts = [code_doc(i) for i in range(total)]
    assert [d.text for d in docs] == texts[: len(docs)]
    assert [d.line for d in docs] == list(range(1, len(docs) + 1))
    assert dict(problems.counts) == {"truncated": 1}, problems.examples
    assert problems.examples["truncated"][0].startswith(f"{path}:{len(docs) + 1}: the file ends inside line")


@pytest.mark.parametrize("fraction", [0.0005, 0.05, 0.31, 0.5, 0.77, 0.97])
def test_truncated_zst_keeps_the_records_before_the_cut_and_reports_it(tmp_path, fraction):
    import zstandard

    # Two frames (as from a parallel compressor or concatenated files): cuts fall in either.
    lines = _jsonl_bytes([code_doc(i) for i in range(400)])
    half = lines.index(b"\n", len(lines) // 2) + 1
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    data = cctx.compress(lines[:half]) + cctx.compress(lines[half:])
    path = tmp_path / "t.jsonl.zst"
    path.write_bytes(data[: int(len(data) * fraction)])
    docs, problems = read([path])
    assert len(docs) < 400
    _assert_prefix_kept_and_cut_reported(path, docs, problems, 400)


def test_zst_cut_in_its_last_checksum_keeps_every_record_and_still_reports_the_cut(tmp_path):
    import zstandard

    data = zstandard.ZstdCompressor(write_checksum=True).compress(
        _jsonl_bytes([code_doc(i) for i in range(50)])
    )
    (tmp_path / "t.jsonl.zst").write_bytes(data[:-2])
    docs, problems = read([tmp_path / "t.jsonl.zst"])
    assert len(docs) == 50
    _assert_prefix_kept_and_cut_reported(tmp_path / "t.jsonl.zst", docs, problems, 50)


def test_whole_multi_frame_zst_reads_every_record(tmp_path):
    import zstandard

    texts = [code_doc(i) for i in range(30)]
    cctx = zstandard.ZstdCompressor()
    data = b"".join(cctx.compress(_jsonl_bytes(texts[i : i + 7])) for i in range(0, 30, 7))
    (tmp_path / "m.jsonl.zst").write_bytes(data)
    docs, problems = read([tmp_path / "m.jsonl.zst"])
    assert [d.text for d in docs] == texts and not problems.counts


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_truncated_gzip_at_several_points(tmp_path, fraction):
    data = gzip.compress(_jsonl_bytes([code_doc(i) for i in range(400)]))
    path = tmp_path / "t.jsonl.gz"
    path.write_bytes(data[: int(len(data) * fraction)])
    docs, problems = read([path])
    assert len(docs) < 400
    _assert_prefix_kept_and_cut_reported(path, docs, problems, 400)


@pytest.mark.parametrize("suffix", [".jsonl.zst", ".jsonl.gz"])
def test_corrupt_compressed_file_is_reported_and_reading_goes_on(tmp_path, suffix):
    import zstandard

    lines = _jsonl_bytes([code_doc(i) for i in range(400)])
    data = bytearray(
        zstandard.ZstdCompressor().compress(lines) if suffix == ".jsonl.zst" else gzip.compress(lines)
    )
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    (tmp_path / f"bad{suffix}").write_bytes(bytes(data))
    write_jsonl(tmp_path / "good.jsonl", [{"content": code_doc(1000)}])
    docs, problems = read([tmp_path / f"bad{suffix}", tmp_path / "good.jsonl"])
    assert problems.counts["unreadable_file"] == 1
    assert str(tmp_path / f"bad{suffix}") in problems.examples["unreadable_file"][0]
    assert docs[-1].text == code_doc(1000)


def test_a_line_too_long_for_max_doc_chars_is_skipped_without_being_held(tmp_path):
    import tracemalloc

    path = tmp_path / "long.jsonl"
    with open(path, "wb") as f:
        f.write(json.dumps({"content": code_doc(0)}).encode() + b"\n")
        f.write(b'{"content": "' + b"x" * 30_000_000)  # 30 MB without a newline
        f.write(b'"}\n' + json.dumps({"content": code_doc(1)}).encode() + b"\n")
    tracemalloc.start()
    try:
        docs, problems = read([path], max_doc_chars=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [d.text for d in docs] == [code_doc(0), code_doc(1)] and [d.line for d in docs] == [1, 3]
    assert dict(problems.counts) == {"too_large": 1}
    assert problems.examples["too_large"][0].startswith(f"{path}:2: line of 30,000,016 bytes")
    assert peak < 8_000_000  # the 30 MB line was never held


@pytest.mark.timeout(60)  # a FIFO that is opened blocks forever: fail, do not hang
def test_special_files_are_reported_never_opened_and_good_files_kept(tmp_path):
    import socket

    src = tmp_path / "src"
    src.mkdir()
    good = [code_doc(i) for i in range(4)]
    for i, text in enumerate(good):
        (src / f"m{i}.py").write_text(text)
    os.symlink("/dev/zero", src / "big.py")
    os.mkfifo(src / "pipe.py")
    os.symlink(tmp_path / "nowhere.py", src / "dangling.py")
    os.symlink(src / "pipe.py", src / "to_pipe.py")
    os.symlink("loop.py", src / "loop.py")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock.py"))
    (tmp_path / "real.py").write_text(code_doc(10))
    os.symlink(tmp_path / "real.py", src / "link.py")  # a symlink to a regular file is followed
    try:
        docs, problems = read([src])
    finally:
        sock.close()
    assert sorted(d.text for d in docs) == sorted([*good, code_doc(10)])
    assert dict(problems.counts) == {"not_regular_file": 6}
    found = dict(e.split(": ", 1) for e in problems.examples["not_regular_file"])
    assert found == {
        str(src / "big.py"): "symlink to a character device (/dev/zero)",
        str(src / "dangling.py"): f"dangling symlink to {tmp_path / 'nowhere.py'}",
        str(src / "loop.py"): "symlink that cannot be followed to a file (Too many levels of symbolic links)",
        str(src / "pipe.py"): "a FIFO",
        str(src / "sock.py"): "a socket",
        str(src / "to_pipe.py"): f"symlink to a FIFO ({src / 'pipe.py'})",
    }


@pytest.mark.timeout(60)
def test_special_files_among_jsonl_shards_and_as_named_inputs(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", [{"content": code_doc(1)}])
    os.symlink("/dev/zero", tmp_path / "zero.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl.zst")
    docs, problems = read([tmp_path])
    assert [d.text for d in docs] == [code_doc(1)] and problems.counts == {"not_regular_file": 2}
    docs, problems = read([tmp_path / "fifo.jsonl.zst"])
    assert not docs and problems.examples["not_regular_file"] == [f"{tmp_path / 'fifo.jsonl.zst'}: a FIFO"]


@pytest.mark.timeout(60)
def test_a_fifo_swapped_in_after_listing_is_not_read():
    """The worker's read checks the open descriptor too (the listing's check can be raced)."""
    from data_tools.sources import Record, decode_record

    path = Path(tempfile.mkdtemp()) / "swapped.py"
    os.mkfifo(path)
    text, problem = decode_record(Record(str(path), 0, None), SourceConfig())
    assert text is None and problem == ("not_regular_file", str(path), "a FIFO")


def test_size_cap_applies_while_reading_a_source_file(tmp_path):
    with open(tmp_path / "sparse.py", "wb") as f:
        f.truncate(64 * 2**30)  # 64 GiB, sparse: only a bounded read can get through it
    (tmp_path / "ok.py").write_text(code_doc(0))
    docs, problems = read([tmp_path], max_doc_chars=1000)
    assert [d.text for d in docs] == [code_doc(0)]
    assert problems.examples["too_large"] == [
        f"{tmp_path / 'sparse.py'}: more than 4,000 bytes (4 per character of max_doc_chars 1,000)"
    ]


def test_lone_surrogates_are_skipped_as_invalid_unicode_and_pairs_kept(tmp_path):
    path = tmp_path / "s.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps({"content": code_doc(0)}) + "\n")
        f.write('{"content": "def f():\\n    return \'\\ud800\'\\n"}\n')  # line 2: a lone high surrogate
        f.write('{"content": "def g():\\n    return \'\\ud83d\\ude00\'\\n"}\n')  # line 3: a pair, one emoji
        f.write('{"content": "def h():\\n    return \'\\udc00x\'\\n"}\n')  # line 4: a lone low surrogate
    docs, problems = read([path])
    assert [d.line for d in docs] == [1, 3] and docs[1].text == "def g():\n    return '\U0001f600'\n"
    assert dict(problems.counts) == {"invalid_unicode": 2}
    assert problems.examples["invalid_unicode"] == [
        f"{path}:2: lone surrogate U+D800 at character 21 (not encodable as UTF-8)",
        f"{path}:4: lone surrogate U+DC00 at character 21 (not encodable as UTF-8)",
    ]


# ---- a directory as input: data corpus or source tree --------------------------------------------------


def _zst_lines(texts: list[str]) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(_jsonl_bytes(texts))


def test_a_directory_of_jsonl_files_is_one_corpus_in_sorted_path_order(tmp_path, caplog):
    corpus = tmp_path / "corpus"
    (corpus / "b" / "deeper").mkdir(parents=True)
    (corpus / "b" / "deeper" / "x.jsonl.zst").write_bytes(_zst_lines([code_doc(1)]))
    (corpus / "b" / "y.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes([code_doc(2), code_doc(3)])))
    write_jsonl(corpus / "a.jsonl", [{"content": code_doc(0)}])
    write_jsonl(corpus / "c.ndjson", [{"content": code_doc(4)}])
    (corpus / "README.md").write_text("one JSON object per line\n")
    (corpus / "stats.json").write_text("{}\n")
    caplog.set_level("INFO", logger="data_tools.sources")
    docs, problems = read([corpus])
    assert [d.text for d in docs] == [code_doc(i) for i in range(5)] and not problems.counts
    assert [d.path for d in docs][1:3] == [str(corpus / "b/deeper/x.jsonl.zst"), str(corpus / "b/y.jsonl.gz")]
    assert "2 file(s) that are not JSONL/Parquet were not read (README.md, stats.json)" in caplog.text
    # The order is sorted()'s over the whole paths, as before directories were streamed.
    files = [p for p in corpus.rglob("*") if p.is_file() and p.name not in ("README.md", "stats.json")]
    assert [p for _, p in expand_inputs(SourceConfig(inputs=(str(corpus),)))] == sorted(files)


def test_a_directory_of_data_and_source_files_is_refused_unless_dir_format_chooses(tmp_path):
    write_jsonl(tmp_path / "shard.jsonl", [{"content": code_doc(0)}])
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "download.py").write_text(code_doc(1))
    with pytest.raises(DataError) as e:
        read([tmp_path])
    assert str(e.value) == (
        f"{tmp_path}: holds both data files (1 JSONL/Parquet, e.g. shard.jsonl) and source files (1 with "
        "extensions ['.py'], e.g. tools/download.py), so how to read it cannot be guessed. Pass "
        "--dir-format data to read its JSONL/Parquet files as one corpus, or --dir-format source to read "
        "its source files as documents."
    )
    docs, _ = read([tmp_path], dir_format="data")
    assert [d.text for d in docs] == [code_doc(0)]
    docs, _ = read([tmp_path], dir_format="source")
    assert [d.text for d in docs] == [code_doc(1)]
    with pytest.raises(DataError, match=r"dir_format \('jsonl'\) must be one of auto, data, source"):
        SourceConfig(dir_format="jsonl")


def test_bad_members_of_a_data_directory_are_reported_by_file_and_good_ones_read(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "a.jsonl", [{"content": code_doc(0)}])
    corrupt = bytearray(_zst_lines([code_doc(i) for i in range(400)]))
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 8] = b"\xff" * 8
    (tmp_path / "b.jsonl.zst").write_bytes(bytes(corrupt))
    (tmp_path / "c.jsonl.bz2").write_bytes(b"BZh9")
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes([code_doc(5)]))[:-12])
    (tmp_path / "locked").mkdir()
    write_jsonl(tmp_path / "locked" / "e.jsonl", [{"content": code_doc(6)}])
    write_jsonl(tmp_path / "z.jsonl", [{"content": code_doc(7)}])
    real_scandir = os.scandir

    def scandir(path="."):  # root can list any directory: deny this one as a permission would
        if Path(path) == tmp_path / "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    docs, problems = read([tmp_path])
    assert [d.text for d in docs][0] == code_doc(0) and docs[-1].text == code_doc(7)
    assert dict(problems.counts) == {"unreadable_file": 2, "unsupported_file": 1, "truncated": 1}
    unreadable = problems.examples["unreadable_file"]
    assert unreadable[0].startswith(f"{tmp_path / 'b.jsonl.zst'}:") and "ZstdError" in unreadable[0]
    assert unreadable[1] == (
        f"{tmp_path / 'locked'}: a directory that cannot be listed (Permission denied): its files were "
        "not read"
    )
    assert problems.examples["unsupported_file"] == [
        f"{tmp_path / 'c.jsonl.bz2'}: JSON lines compressed as .bz2, which is not read: recompress it as "
        ".gz or .zst"
    ]
    summary = problems.summary()
    assert "1 unsupported_file (" in summary and str(tmp_path / "c.jsonl.bz2") in summary

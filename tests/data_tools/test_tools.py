"""What a user of the three tools sees when something is wrong: one clear message and exit status 2 for
expected failures (checked before any input is read where possible), every good record kept when only
some records are bad, and a closing summary of what was skipped."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from data_tools import clean, preprocess, sources, train_tokenizer
from data_tools.manifest import load_manifest

from .conftest import code_doc, write_jsonl

GOOD = [code_doc(i) for i in range(30)]


def run_tool(tool: str, inputs: list[Path], output: Path, *extra: str) -> int:
    main = {"clean": clean.main, "train": train_tokenizer.main, "preprocess": preprocess.main}[tool]
    args = ["--input", *map(str, inputs), "--output", str(output), "--quiet", "--workers", "1", *extra]
    if tool != "clean":
        args += ["--vocab-size", "300"]
    return main(args)


def kept_texts(tool: str, output: Path) -> list[str] | int:
    """The documents a tool kept: their texts (clean), or how many (train-tokenizer, preprocess)."""
    if tool == "clean":
        return [json.loads(line)["content"] for line in output.read_text().splitlines()]
    if tool == "train":
        report = json.loads((output / "training_report.json").read_text())
        return report["train_docs"] + report["held_out_docs"]
    s = load_manifest(output)["splits"]
    return s["train"]["documents"] + s["valid"]["documents"]


def bad_input(tool: str, output: Path) -> dict:
    if tool == "clean":
        return json.loads(output.with_name("out.report.json").read_text())["bad_input"]
    if tool == "train":
        return json.loads((output / "training_report.json").read_text())["cleaning"]["bad_input"]
    return json.loads((output / "report.json").read_text())["bad_input"]


def output_of(tool: str, tmp_path: Path) -> Path:
    return tmp_path / ("out.jsonl" if tool == "clean" else "out")


# ---- bad records: skipped with file:line, every good record kept, a closing summary -----------------


@pytest.mark.parametrize("tool", ["clean", "train", "preprocess"])
def test_lone_surrogate_record_is_skipped_by_every_tool(tool, tmp_path, caplog):
    path = tmp_path / "in.jsonl"
    with open(path, "w") as f:
        for i, text in enumerate(GOOD):
            if i == 7:
                f.write('{"content": "def f():\\n    return \'\\ud800\'\\n"}\n')  # line 8
            f.write(json.dumps({"content": text}) + "\n")
    out = output_of(tool, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert run_tool(tool, [path], out) == 0
    found = bad_input(tool, out)
    assert found["counts"] == {"invalid_unicode": 1}
    assert found["examples"]["invalid_unicode"][0].startswith(f"{path}:8: lone surrogate U+D800")
    assert kept_texts(tool, out) == (GOOD if tool == "clean" else len(GOOD))
    assert "skipped bad input: 1 invalid_unicode" in caplog.text


@pytest.mark.parametrize("tool", ["clean", "preprocess"])
def test_truncated_zst_is_named_in_the_closing_summary(tool, tmp_path, caplog):
    import zstandard

    # Some incompressible bytes in each document, so that the cut falls mid-file in the decompressed data.
    texts = [code_doc(i) + f"# {hashlib.sha256(bytes(i)).hexdigest()}\n" for i in range(1000)]
    data = zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"content": t}) + "\n" for t in texts).encode()
    )
    path = tmp_path / "in.jsonl.zst"
    path.write_bytes(data[: len(data) // 2])
    out = output_of(tool, tmp_path)
    with caplog.at_level(logging.WARNING):
        assert run_tool(tool, [path], out) == 0
    found = bad_input(tool, out)
    assert found["counts"] == {"truncated": 1}
    kept = kept_texts(tool, out)
    n = len(kept) if tool == "clean" else kept
    assert 0 < n < len(texts) and kept == (texts[:n] if tool == "clean" else n)
    summary = [r.message for r in caplog.records if r.message.startswith("skipped bad input")]
    report = out.with_name("out.report.json") if tool == "clean" else out / "report.json"
    assert summary == [
        f"skipped bad input: 1 truncated ({path}:{n + 1}: the file ends inside line {n + 1}: lines 1-{n} "
        f"were read, the rest is lost (the file ends inside a zstd frame)); details in {report}"
    ]


def test_binary_documents_are_removed_by_default_and_kept_when_the_filter_is_off(tmp_path):
    nul = code_doc(100).replace("import os", "import os\x00")
    write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in [*GOOD[:5], nul]])
    assert run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "out.jsonl") == 0
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["removed"] == {"binary": {"docs": 1, "bytes": len(nul)}} and report["kept_docs"] == 5
    assert kept_texts("clean", tmp_path / "out.jsonl") == GOOD[:5]
    args = ("--disable-filter", "binary")
    assert run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "out.jsonl", *args) == 0
    assert kept_texts("clean", tmp_path / "out.jsonl") == [*GOOD[:5], nul]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_special_files_in_a_source_tree_end_to_end(tmp_path, workers):
    src = tmp_path / "src"
    src.mkdir()
    for i, text in enumerate(GOOD[:6]):
        (src / f"m{i}.py").write_text(text)
    os.symlink("/dev/zero", src / "big.py")
    os.mkfifo(src / "pipe.py")
    os.symlink(tmp_path / "gone.py", src / "dangling.py")
    out = tmp_path / "out.jsonl"
    assert run_tool("clean", [src], out, "--workers", workers) == 0
    assert sorted(kept_texts("clean", out)) == sorted(GOOD[:6])
    assert bad_input("clean", out)["counts"] == {"not_regular_file": 3}


# ---- output locations: checked before any input is read ---------------------------------------------


@pytest.fixture
def no_input_reading(monkeypatch):
    """Fails the test if a tool starts reading its inputs."""

    def refuse(cfg):
        raise AssertionError("the inputs were read before the output location was checked")

    monkeypatch.setattr(sources, "iter_inputs", refuse)  # expand_inputs and iter_records call it


@pytest.mark.parametrize("tool", ["clean", "train", "preprocess"])
def test_output_under_a_regular_file_fails_first_with_one_line(tool, tmp_path, capsys, no_input_reading):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a directory\n")
    out = blocker / "sub" / ("out.jsonl" if tool == "clean" else "out")
    assert run_tool(tool, [tmp_path / "in.jsonl"], out) == 2
    err = capsys.readouterr().err
    parent = out.parent if tool == "clean" else out
    assert err == (
        f"error: --output {parent}: cannot create or write this directory ({blocker} is a file, not a "
        "directory). Choose another --output, or make it a writable directory.\n"
    )


@pytest.mark.parametrize("tool", ["train", "preprocess"])
def test_output_directory_that_is_a_file(tool, tmp_path, capsys, no_input_reading):
    (tmp_path / "out").write_text("")
    assert run_tool(tool, [tmp_path / "in.jsonl"], tmp_path / "out") == 2
    assert f"--output {tmp_path / 'out'}: cannot create or write this directory" in capsys.readouterr().err


def test_clean_output_that_is_a_directory_and_report_under_a_file(tmp_path, capsys, no_input_reading):
    (tmp_path / "out.jsonl").mkdir()
    assert run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "out.jsonl") == 2
    assert "is a directory; give a file name in it" in capsys.readouterr().err
    (tmp_path / "f").write_text("")
    args = ("--report", str(tmp_path / "f" / "r.json"))
    assert run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "o.jsonl", *args) == 2
    assert f"error: --report {tmp_path / 'f'}: cannot create" in capsys.readouterr().err


# ---- other expected failures: one line, exit status 2 ----------------------------------------------


def test_corrupt_tokenizer_is_named(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in GOOD])
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    args = ("--tokenizer", str(tok))
    assert run_tool("preprocess", [tmp_path / "in.jsonl"], tmp_path / "out", *args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tok / 'tokenizer.json'}: not a tokenizer file the tokenizers library")
    assert "Traceback" not in err and err.count("\n") == 1


def test_bad_option_value_is_exit_status_2(tmp_path, capsys):
    assert run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "o.jsonl", "--valid-ratio", "1.5") == 2
    assert capsys.readouterr().err == "error: --valid-ratio (1.5) must be in [0, 1)\n"


def test_a_full_disk_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o.jsonl.tmp"))

    monkeypatch.setattr(clean, "clean", full)
    assert run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "o.jsonl") == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'o.jsonl.tmp'}: No space left on device (")


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(clean, "clean", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        run_tool("clean", [tmp_path / "in.jsonl"], tmp_path / "o.jsonl")

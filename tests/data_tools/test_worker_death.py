"""A worker process that dies (killed for lack of memory, a crash in native code) stops the job with one
message naming the inputs in flight, and exit status 2, not a BrokenProcessPool traceback.

The worker is killed from the test: a patched worker function, inherited by the forked pool, sends its own
process SIGKILL (as the kernel's OOM killer does) on a marked input."""

from __future__ import annotations

import os
import signal

import pytest

from data_tools import clean, parallel, preprocess

from .conftest import code_doc, write_jsonl


def _die_on(monkeypatch, name: str, arg: int, marker: str) -> None:
    """Make the worker function `name` of data_tools.parallel kill its process (as the kernel's OOM
    killer does) when its argument number `arg` holds `marker`. The pool forks its workers after this,
    so they inherit the patch."""
    real = getattr(parallel, name)

    def dying(*args, **kwargs):
        if marker in repr(args[arg]):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)

    monkeypatch.setattr(parallel, name, dying)


@pytest.mark.timeout(120)
def test_a_dead_worker_stops_clean_naming_the_files_in_flight(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"m{i}.py").write_text(code_doc(i))
    (src / "boom.py").write_text(code_doc(99))
    _die_on(monkeypatch, "decode_record", 0, "boom.py")
    args = ["--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--quiet", "--workers", "2"]
    assert clean.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a worker process died (killed by the system, often for lack of memory")
    assert f"the 6 files from {src / 'boom.py'} to {src / 'm4.py'} (in path order)" in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.timeout(120)
def test_a_worker_dying_while_tokenising_stops_preprocess_naming_the_lines(
    tmp_path, capsys, monkeypatch, small_tokenizer
):
    texts = [code_doc(i) for i in range(30)] + [code_doc(500).replace("import os", "import boom")]
    write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in texts])
    _die_on(monkeypatch, "encode_documents", 1, "import boom")
    args = ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out"), "--quiet"]
    assert preprocess.main([*args, "--tokenizer", str(small_tokenizer), "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: a worker process died") and f"{tmp_path / 'in.jsonl'} lines 1-31" in err
    assert "Traceback" not in err and not (tmp_path / "out" / "manifest.json").exists()

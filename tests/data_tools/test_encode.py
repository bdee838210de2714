"""Long documents are encoded in pieces: the same ids as the whole, in bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_tools import encode
from data_tools.encode import encode_documents, pieces
from data_tools.train_tokenizer import load_tokenizer

from .conftest import code_doc

ROOT = Path(__file__).resolve().parents[2]

TRICKY = [
    "x = 1\r\n    y = 2\r\n" * 40,  # CRLF line ends
    "it's the user's turn, isn't it?\n" * 30,  # contractions across every cut candidate
    "a=b+c;" * 200 + "d(e,f)[g]" * 100,  # no whitespace at all: cuts between classes
    "\n\n\n    \t  \n" * 100 + "def f():\n    pass\n",  # whitespace runs
    "é中文 names_1 = ünïcödé_2  # 😀\n" * 40,  # non-ASCII letters
    "    " + "value_" * 300,  # underscores and letters
]


def test_pieces_are_bounded_and_rejoin_to_the_text():
    for text in [*TRICKY, "a" * 1000, code_doc(3) * 20]:
        parts = list(pieces(text, 300))
        assert "".join(parts) == text and all(len(p) <= 300 for p in parts)
        assert all(len(p) >= 150 for p in parts[:-1])
    assert list(pieces("short", 300)) == ["short"]


def test_encoding_in_pieces_gives_the_ids_of_the_whole(small_tokenizer, stdlib_sample, monkeypatch):
    tokenizer, eod = load_tokenizer(small_tokenizer)
    texts = [*stdlib_sample, *TRICKY]
    whole = [e.ids for e in tokenizer.encode_batch_fast(texts, add_special_tokens=False)]
    monkeypatch.setattr(encode, "MAX_PIECE_CHARS", 300)
    assert sum(len(t) > 300 for t in texts) > 50
    flat, lengths = encode_documents(tokenizer, texts, eod, np.uint16)
    assert lengths.tolist() == [len(ids) + 1 for ids in whole]
    expected = [i for ids in whole for i in [*ids, eod]]
    np.testing.assert_array_equal(flat, np.asarray(expected, dtype=np.uint16))


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_document_of_tens_of_megabytes_goes_through_in_bounded_memory(tmp_path, small_tokenizer):
    """Forced through every limit (--max-doc-chars 100000000 --no-filters), a 20 MB document is tokenised
    in pieces: whole, the tokenizer alone would need over 3 GB for it."""
    line = "    total = compute_value(item, scale=3) + offset_7  # running sum\n"
    big = "def f(item, offset_7):\n" + line * (20_000_000 // len(line))
    with open(tmp_path / "in.jsonl", "w") as f:
        for text in (code_doc(1), big, code_doc(2)):
            f.write(json.dumps({"content": text}) + "\n")
    script = (
        "import resource, sys\n"
        "from data_tools.preprocess import main\n"
        "code = main(sys.argv[1:])\n"
        "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(code)\n"
    )
    args = ["--input", str(tmp_path / "in.jsonl"), "--tokenizer", str(small_tokenizer)]
    args += ["--output", str(tmp_path / "out"), "--max-doc-chars", "100000000", "--no-filters"]
    args += ["--workers", "1", "--quiet"]
    result = subprocess.run(
        [sys.executable, "-c", script, *args], cwd=ROOT, capture_output=True, text=True, timeout=110
    )
    assert result.returncode == 0, result.stderr
    peak_mb = int(result.stdout.split("peak_rss_kb")[1]) / 1024
    assert peak_mb < 1000, f"peak RSS {peak_mb:.0f} MB"
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    s = manifest["splits"]
    assert s["train"]["documents"] + s["valid"]["documents"] == 3
    assert s["train"]["tokens"] + s["valid"]["tokens"] > len(big) / 4

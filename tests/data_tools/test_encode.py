"""Long documents are encoded in pieces: the same ids as the whole, in bounded memory. tiktoken gives the ids
of tokenizers, is chosen when it does, refused with the reason when it could not, and the job's shards are
the same bytes either way."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_tools import encode, preprocess
from data_tools.encode import ChosenEncoder, choose_encoder, encode_documents, pieces
from data_tools.errors import DataError
from data_tools.fast_encode import TiktokenEncoder, tiktoken_encoder
from data_tools.manifest import load_manifest
from data_tools.parallel import CleanConfig
from data_tools.preprocess import PreprocessConfig
from data_tools.sources import Problems, SourceConfig, iter_documents
from data_tools.train_tokenizer import EOD_TOKEN, load_tokenizer, train

from .conftest import code_doc, write_jsonl

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


# ---- tiktoken: the same ids as tokenizers, chosen automatically --------------------------------------

FIM = ["<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>"]


def both_encoders(tokenizer) -> tuple[ChosenEncoder, ChosenEncoder]:
    fast = choose_encoder(tokenizer, "tiktoken")
    assert fast.backend == "tiktoken" and isinstance(fast.encoder, TiktokenEncoder) and fast.reason is None
    return fast, choose_encoder(tokenizer, "tokenizers")


def assert_same_encoding(texts, eod, fast, slow):
    a_flat, a_lengths = encode_documents(slow.encoder, texts, eod, np.int32)
    b_flat, b_lengths = encode_documents(fast.encoder, texts, eod, np.int32)
    np.testing.assert_array_equal(a_lengths, b_lengths)
    np.testing.assert_array_equal(a_flat, b_flat)
    return a_flat


@pytest.mark.timeout(60)
def test_tiktoken_gives_tokenizers_ids_on_the_whole_standard_library(tmp_path):
    """Every document of the default corpus, plus some with the end-of-document token inside and empty
    ones, with a 4,096-id tokenizer the repo trains: the same ids, and the same pieces of long documents."""
    docs = [d.text for d in iter_documents(SourceConfig(), Problems(log=False))]
    train(docs[::10], tmp_path / "tok", vocab_size=4096, show_progress=False)
    tokenizer, eod = load_tokenizer(tmp_path / "tok")
    assert tokenizer.get_vocab_size() == 4096
    fast, slow = both_encoders(tokenizer)
    halves = [d[: len(d) // 2] + EOD_TOKEN + d[len(d) // 2 :] for d in docs[::40]]
    texts = ["", *docs, "", *halves, EOD_TOKEN, ""]
    assert len(docs) > 1500 and sum(len(t) > encode.MAX_PIECE_CHARS for t in texts) >= 3
    flat = assert_same_encoding(texts, eod, fast, slow)
    assert int((flat == eod).sum()) == len(texts) + len(halves) + 1


def test_any_number_of_special_tokens(small_tokenizer, stdlib_sample):
    tokenizer, eod = load_tokenizer(small_tokenizer)
    tokenizer.add_special_tokens(FIM)
    fast, slow = both_encoders(tokenizer)
    texts = [
        f"<fim_prefix>{t[:200]}<fim_suffix>{t[300:400]}<fim_middle>{t[200:300]}{EOD_TOKEN}<fim_pad><fim_pad>"
        for t in stdlib_sample
    ]
    flat = assert_same_encoding([*texts, "<fim_pad", "<fim_middle<fim_suffix>>"], eod, fast, slow)
    fim_ids = [tokenizer.token_to_id(t) for t in FIM]
    assert all(int((flat == i).sum()) >= len(texts) for i in fim_ids)


def _variant(tok_dir: Path, edit) -> Any:
    """The tokenizer of `tok_dir` with `edit` applied to its Tokenizer (or, for a function of a dict, to its
    JSON)."""
    from tokenizers import Tokenizer

    tokenizer, _ = load_tokenizer(tok_dir)
    if "spec" in edit.__code__.co_varnames:
        spec = json.loads(tokenizer.to_str())
        edit(spec)
        return Tokenizer.from_str(json.dumps(spec))
    edit(tokenizer)
    return tokenizer


def _swap_two_merges(spec) -> None:
    """Merges 10 and 11 in the other order: tokenizers' priorities no longer follow the ids."""
    merges = spec["model"]["merges"]
    merges[10], merges[11] = merges[11], merges[10]


def _set(attr, value):
    return lambda tokenizer: setattr(tokenizer, attr, value)


def _refusals():
    from tokenizers import AddedToken, normalizers, pre_tokenizers

    return {
        "merge ids not increasing in merge order": _swap_two_merges,
        "the tokenizer has a normalizer (NFKC)": _set("normalizer", normalizers.NFKC()),
        "the pre-tokenizer is not ByteLevel": _set("pre_tokenizer", pre_tokenizers.ByteLevel(True)),
        "added token 'hello_world' is not special": lambda tokenizer: tokenizer.add_tokens(["hello_world"]),
        "added token '<sep>' sets lstrip": lambda tokenizer: tokenizer.add_special_tokens(
            [AddedToken("<sep>", lstrip=True, special=True)]
        ),
        "added token '<|endoftext|>' is a prefix of '<|endoftext|>!'": lambda tokenizer: (
            tokenizer.add_special_tokens(["<|endoftext|>!"])
        ),
    }


@pytest.mark.parametrize("why", list(_refusals()))
def test_tokenizers_tiktoken_cannot_reproduce_are_refused_with_the_reason(small_tokenizer, why, caplog):
    tokenizer = _variant(small_tokenizer, _refusals()[why])
    assert why in tiktoken_encoder(tokenizer)
    caplog.set_level(logging.INFO, "data_tools.encode")
    chosen = choose_encoder(tokenizer, "auto", sample=iter(["never read"]))
    assert chosen.backend == "tokenizers" and chosen.encoder is tokenizer and why in chosen.reason
    assert f"encoding with tokenizers, not the faster tiktoken: {chosen.reason}" in caplog.text
    with pytest.raises(DataError, match=f"--encoder tiktoken: {re.escape(chosen.reason)}. Use --encoder"):
        choose_encoder(tokenizer, "tiktoken")


def test_without_tiktoken_the_job_uses_tokenizers(small_tokenizer, monkeypatch):
    tokenizer, _ = load_tokenizer(small_tokenizer)
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # as if not installed: import raises ImportError
    chosen = choose_encoder(tokenizer)
    assert chosen.backend == "tokenizers" and "tiktoken is not installed" in chosen.reason


def test_ids_that_differ_on_the_sample_mean_tokenizers(small_tokenizer, tmp_path, monkeypatch, caplog):
    """Were a conversion ever wrong, the comparison at start would find it: here tiktoken is handed
    another tokenizer's vocabulary."""
    train([code_doc(i) for i in range(30)], tmp_path / "other", vocab_size=300, show_progress=False)
    other = tiktoken_encoder(load_tokenizer(tmp_path / "other")[0])
    monkeypatch.setattr(encode, "tiktoken_encoder", lambda tokenizer: other)
    tokenizer, _ = load_tokenizer(small_tokenizer)
    caplog.set_level(logging.INFO, "data_tools.encode")
    chosen = choose_encoder(tokenizer, sample=[code_doc(1)])
    assert chosen.backend == "tokenizers"
    assert re.match(r"its ids differ from tokenizers' on sample text \d+ \(.*\) at token \d+", chosen.reason)
    assert "not the faster tiktoken: its ids differ" in caplog.text


# ---- the job: the same shard bytes with either encoder ----------------------------------------------


def _shard_bytes(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(out.glob("*_*.*")) if p.suffix in (".bin", ".idx")}
    assert files
    return files


def _job(inp: Path, out: Path, tok: Path, *extra: str) -> list[str]:
    return ["--input", str(inp), "--output", str(out), "--tokenizer", str(tok), "--quiet", *extra]


@pytest.mark.parametrize("mode", ["whole job", "tokenize-only"])
def test_either_encoder_writes_the_same_shard_bytes(tmp_path, small_tokenizer, stdlib_sample, mode, caplog):
    """The job with tiktoken in 2 workers, and with tokenizers in 1: the same .bin and .idx bytes."""
    texts = [*stdlib_sample, *(t[:500] + EOD_TOKEN + t[500:] for t in stdlib_sample[:10])]
    inp = write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in texts])
    extra = ["--valid-ratio", "0.2", "--shard-tokens", "20000", *[f"--{mode}"] * (mode == "tokenize-only")]
    caplog.set_level(logging.INFO, "data_tools.encode")
    assert preprocess.main(_job(inp, tmp_path / "tk", small_tokenizer, *extra, "--workers", "2")) == 0
    assert "encoding with tiktoken: the same ids as tokenizers" in caplog.text
    assert preprocess.main(_job(inp, tmp_path / "hf", small_tokenizer, *extra, "--encoder=tokenizers")) == 0
    assert _shard_bytes(tmp_path / "tk") == _shard_bytes(tmp_path / "hf")
    assert len(_shard_bytes(tmp_path / "tk")) > 4  # train and valid shards of several units
    tk, hf = load_manifest(tmp_path / "tk"), load_manifest(tmp_path / "hf")
    assert tk["config"]["fingerprint"] == hf["config"]["fingerprint"] and tk["splits"] == hf["splits"]
    assert tk["report"].pop("encoders") == ["tiktoken"] and hf["report"].pop("encoders") == ["tokenizers"]
    assert tk["report"] == hf["report"]


def test_a_refused_tokenizer_falls_back_and_writes_the_same_shards(tmp_path, small_tokenizer, stdlib_sample):
    tok_dir = tmp_path / "swapped"
    tok_dir.mkdir()
    _variant(small_tokenizer, _swap_two_merges).save(str(tok_dir / "tokenizer.json"))
    inp = write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in stdlib_sample])
    assert preprocess.main(_job(inp, tmp_path / "auto", tok_dir, "--tokenize-only")) == 0
    forced = _job(inp, tmp_path / "hf", tok_dir, "--tokenize-only", "--encoder=tokenizers")
    assert preprocess.main(forced) == 0
    assert _shard_bytes(tmp_path / "auto") == _shard_bytes(tmp_path / "hf")
    assert load_manifest(tmp_path / "auto")["report"]["encoders"] == ["tokenizers"]
    with pytest.raises(DataError, match="--encoder tiktoken: merge 11 .* not increasing in merge order"):
        preprocess.preprocess(
            PreprocessConfig(
                sources=SourceConfig(inputs=(str(inp),)),
                clean=CleanConfig.tokenize_only(),
                output=tmp_path / "forced",
                tokenizer=tok_dir,
                show_progress=False,
                tokenize_only=True,
                encoder="tiktoken",
            )
        )


def test_a_job_resumes_across_encoders(tmp_path, small_tokenizer, stdlib_sample):
    """Units written by tokenizers are kept when the job resumes with tiktoken (the fingerprint does not
    name the encoder); the result is the uninterrupted run's, and the report names both."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in stdlib_sample])
    extra = ["--tokenize-only", "--shard-tokens", "1"]  # a unit per batch
    assert preprocess.main(_job(inp, tmp_path / "ref", small_tokenizer, *extra)) == 0
    out = tmp_path / "out"
    assert preprocess.main(_job(inp, out, small_tokenizer, *extra, "--encoder", "tokenizers")) == 0
    units = sorted((out / "units").glob("*.json"))
    assert len(units) >= 3
    for unit in units[1:]:  # as if killed after the first unit
        unit.unlink()
    (out / "manifest.json").unlink()
    assert preprocess.main(_job(inp, out, small_tokenizer, *extra)) == 0
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "ref")
    records = [json.loads(p.read_text()) for p in sorted((out / "units").glob("*.json"))]
    assert [r["encoder"] for r in records] == ["tokenizers"] + ["tiktoken"] * (len(records) - 1)
    assert load_manifest(out)["report"]["encoders"] == ["tiktoken", "tokenizers"]


def test_the_start_check_reads_only_the_first_documents(tmp_path):
    texts = [code_doc(i) for i in range(100)]
    records = [{"content": t} for t in texts]
    inp = write_jsonl(tmp_path / "in.jsonl", [records[0], "{not json", *records[1:]])
    sources = SourceConfig(inputs=(str(inp),))
    assert list(preprocess.first_documents(sources, 3, 10**6)) == texts[:3]  # the bad line skipped
    cut = list(preprocess.first_documents(sources, 64, len(texts[0]) + 10))
    assert cut == [texts[0], texts[1][:10]]

"""codeparrot-preprocess --tokenize-only: every document's tokens plus the end-of-document id, in input order,
no filter and no dedup; the split by content hash as in the whole job; resuming; clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from data_tools.dataset import open_split
from data_tools.errors import DataError
from data_tools.manifest import load_manifest, verify_dataset
from data_tools.parallel import CleanConfig
from data_tools.preprocess import PreprocessConfig, main, preprocess
from data_tools.sources import SourceConfig
from data_tools.train_tokenizer import EOD_TOKEN, load_tokenizer

from .conftest import code_doc, write_jsonl


def corpus(tmp_path: Path) -> tuple[Path, list[str]]:
    """A JSONL file holding documents the whole job would remove (a duplicate, generated code, no keywords)
    and one malformed line; returns it and its good documents in order."""
    texts = [code_doc(i) for i in range(30)]
    texts += [code_doc(3), "# auto-generated\n" + code_doc(40), "x = 1\n", "ǆ ü\n" + code_doc(41)]
    path = tmp_path / "in.jsonl"
    write_jsonl(
        path, [{"content": t} for t in texts[:5]] + ["{not json"] + [{"content": t} for t in texts[5:]]
    )
    return path, texts


def all_docs(out: Path, split: str) -> list[list[int]]:
    return [ds[i].tolist() for ds in open_split(out, split) for i in range(len(ds))]


def args(inp: Path, out: Path, tok: Path | None, *extra: str) -> list[str]:
    return [
        "--tokenize-only",
        "--input",
        str(inp),
        "--output",
        str(out),
        *(["--tokenizer", str(tok)] if tok else []),
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_tokens_are_each_documents_encoding_plus_eod_in_order(tmp_path, small_tokenizer, workers):
    inp, texts = corpus(tmp_path)
    assert main(args(inp, tmp_path / "out", small_tokenizer, "--valid-ratio", "0", "--workers", workers)) == 0
    tokenizer, eod = load_tokenizer(small_tokenizer)
    docs = all_docs(tmp_path / "out", "train")
    assert docs == [tokenizer.encode(t, add_special_tokens=False).ids + [eod] for t in texts]
    for ids, text in zip(docs, texts, strict=True):  # the bytes round trip
        assert tokenizer.decode(ids, skip_special_tokens=False) == text + EOD_TOKEN
    m = load_manifest(tmp_path / "out")
    assert m["splits"]["valid"]["documents"] == 0 and m["report"]["kept_docs"] == len(texts)
    assert m["report"]["removed"] == {} and m["report"]["bad_input"]["counts"] == {"malformed_json": 1}
    verify_dataset(tmp_path / "out", progress=False)


def test_split_is_the_whole_jobs_without_filters_and_dedup(tmp_path, small_tokenizer):
    inp, _ = corpus(tmp_path)
    sources = SourceConfig(inputs=(str(inp),))
    common = dict(sources=sources, tokenizer=small_tokenizer, workers=2, show_progress=False)
    ours = preprocess(
        PreprocessConfig(
            output=tmp_path / "a", clean=CleanConfig.tokenize_only(0.3), tokenize_only=True, **common
        )
    )
    whole = preprocess(
        PreprocessConfig(output=tmp_path / "b", clean=CleanConfig.tokenize_only(0.3), **common)
    )
    for split in ("train", "valid"):
        assert all_docs(tmp_path / "a", split) == all_docs(tmp_path / "b", split)
    assert ours["splits"]["valid"]["documents"] > 0
    assert ours["report"] | {"config": None} == whole["report"] | {"config": None}
    assert ours["config"]["fingerprint"] != whole["config"]["fingerprint"]


def test_resume_rewrites_only_the_unfinished_units(tmp_path, small_tokenizer):
    docs = [code_doc(i) + "".join(f"v{i}_{j} = {j}\n" for j in range(i % 40)) for i in range(1300)]
    inp = write_jsonl(tmp_path / "in.jsonl", [{"content": t} for t in docs])
    run = ["--shard-tokens", "5000", "--workers", "2"]  # a unit per batch of 256 records
    assert main(args(inp, tmp_path / "ref", small_tokenizer, *run)) == 0
    shutil.copytree(tmp_path / "ref", tmp_path / "out")
    out, units = tmp_path / "out", sorted((tmp_path / "out" / "units").glob("*.json"))
    assert len(units) >= 4
    for record in units[2:]:  # as if killed after two units
        for shard in json.loads(record.read_text())["shards"].values():
            for ext in (".bin", ".idx"):
                (out / (shard["prefix"] + ext)).unlink()
        record.unlink()
    (out / "manifest.json").unlink()
    assert main(args(inp, out, small_tokenizer, *run)) == 0
    ref, new = load_manifest(tmp_path / "ref"), load_manifest(out)
    assert ref["splits"] == new["splits"] and ref["report"] == new["report"]
    for p in (tmp_path / "ref").glob("*_*.*"):
        assert p.read_bytes() == (out / p.name).read_bytes(), p.name


def test_missing_tokenizer_is_a_clear_error(tmp_path, capsys):
    inp, _ = corpus(tmp_path)
    assert main(args(inp, tmp_path / "out", None)) == 2
    err = capsys.readouterr().err
    assert "--tokenize-only" in err and "--tokenizer DIR" in err and "codeparrot-train-tokenizer" in err
    assert not (tmp_path / "out" / "tokenizer").exists()
    with pytest.raises(DataError, match="needs an existing tokenizer"):
        preprocess(
            PreprocessConfig(
                sources=SourceConfig(inputs=(str(inp),)),
                output=tmp_path / "out",
                clean=CleanConfig.tokenize_only(),
                tokenize_only=True,
            )
        )


def test_cleaning_options_are_refused_not_ignored(tmp_path, small_tokenizer, capsys):
    inp, _ = corpus(tmp_path)
    assert main(args(inp, tmp_path / "out", small_tokenizer, "--near-dedup", "--max-line-length", "50")) == 2
    err = capsys.readouterr().err
    assert "--near-dedup" in err and "--max-line-length" in err and "drop --tokenize-only" in err
    with pytest.raises(DataError, match="exact dedup"):
        preprocess(
            PreprocessConfig(
                sources=SourceConfig(inputs=(str(inp),)),
                output=tmp_path / "o2",
                tokenizer=small_tokenizer,
                tokenize_only=True,
            )
        )
    # --no-filters and --no-dedup agree with it.
    assert main(args(inp, tmp_path / "o3", small_tokenizer, "--no-filters", "--no-dedup")) == 0
    assert np.sum([s["documents"] for s in load_manifest(tmp_path / "o3")["splits"].values()]) == 34

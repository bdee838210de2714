"""bench.preprocess and bench.data_loading at toy sizes, end to end: both preprocess modes against the
limit, the loader against a training step, results JSON through bench.common.finish. No timing assertions."""

from __future__ import annotations

import json

from bench import data_loading
from bench import preprocess as preprocess_bench
from data_tools.preprocess import PreprocessConfig, preprocess
from data_tools.sources import SourceConfig

from .conftest import code_doc, write_jsonl


def test_preprocess_bench_measures_both_modes_and_ends_with_the_ratios(capsys, monkeypatch, tmp_path):
    small = SourceConfig(
        inputs=(str(write_jsonl(tmp_path / "c.jsonl", [{"content": code_doc(i)} for i in range(40)])),)
    )
    monkeypatch.setattr(
        preprocess_bench, "SourceConfig", lambda inputs=(): SourceConfig(inputs=inputs) if inputs else small
    )  # in place of the standard library: seconds
    assert (
        preprocess_bench.main(
            [
                "--copies",
                "1",
                "--vocab-size",
                "300",
                "--repeats",
                "1",
                "--workers",
                "2",
                "--results-dir",
                str(tmp_path / "res"),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("ratio ours/tokenizers limit: ") and "tokenize-only" in printed[-1]
    (path,) = (tmp_path / "res").glob("preprocess_*.json")
    record = json.loads(path.read_text())
    assert len(record["table"]) == 4 and record["printed"][-1] == printed[-1]
    for fig in record["figures"]["corpora"].values():
        for mode in (fig["whole_job"], fig["tokenize_only"]):
            assert mode["ratio"] > 0 and mode["ceiling_ratio"] > 0
            # the same documents, the same tokens: ours' count includes what its filter dropped after encoding
            assert mode["limit"]["tokens"] == mode["ours"]["tokens"] > 0
            ceiling = mode.get("ceiling", mode["limit"])
            assert ceiling["tokens"] == mode["limit"]["tokens"]
            assert {c["how"] for c in mode["configs"].values()} <= {"threads", "processes"}
    sweeps = record["figures"]["corpora"]["stdlib"]["tokenize_only"]["sweeps"]
    assert len(sweeps["limit"]) == 4  # threads and processes, two call sizes: picked on the first corpus


def test_data_loading_bench_ends_with_the_headroom(capsys, tmp_path, small_tokenizer):
    inp = write_jsonl(tmp_path / "c.jsonl", [{"content": code_doc(i)} for i in range(60)])
    cfg = PreprocessConfig(
        sources=SourceConfig(inputs=(str(inp),)),
        output=tmp_path / "data",
        tokenizer=small_tokenizer,
        show_progress=False,
    )
    preprocess(cfg)
    tiny = (
        "--layers 1 --width 32 --heads 2 --seq-len 16 --micro-batch 2 --batches 3 --warmup 1 --steps 1 "
        "--step-repeats 2"
    )
    path = data_loading.main(
        [*tiny.split(), "--data", str(tmp_path / "data"), "--results-dir", str(tmp_path / "res")]
    )
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1].startswith("headroom loader/step samples/s: ")
    record = json.loads(path.read_text())
    h, fim = record["figures"]["headroom"], record["figures"]["fim"]["headroom"]  # FIM off, FIM 0.5
    assert h["min"] <= h["median"] <= h["max"] and h["median"] > 0
    assert fim["min"] <= fim["median"] <= fim["max"] and fim["median"] > 0
    assert record["figures"]["fim"]["fim_rate"] == 0.5
    assert printed[-1] == (
        f"headroom loader/step samples/s: FIM off {h['median']:.2f}x, FIM rate 0.5 {fim['median']:.2f}x"
    )
    (first, *_) = record["figures"]["rounds"]
    assert len(first["loader_per_rank_fim_off"]) == 2 and len(first["loader_per_rank_fim_on"]) == 2
    assert len(record["figures"]["rounds"]) == 2
    assert [r["ratio"] for r in record["table"]] == [round(h["median"], 3), round(fim["median"], 3)]

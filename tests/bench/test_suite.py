"""bench.suite at toy sizes: one real benchmark (generate, --quick) and the report; a missing and a failing
benchmark are recorded as such and the suite goes on. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import suite


def test_quick_suite_runs_generate_and_writes_one_report(capsys, tmp_path) -> None:
    code = suite.main(["--quick", "--only", "generate", "--results-dir", str(tmp_path)])
    printed = capsys.readouterr().out.strip().splitlines()

    assert code == 0
    reports = sorted(tmp_path.glob("suite_*.json"))
    assert len(reports) == 1 and printed[-1].startswith("suite: 1 benchmarks (1 ok")
    assert reports[0].name in printed[-1] and any(line.startswith("report: ") for line in printed)
    report = json.loads(reports[0].read_text())
    assert report["quick"] and report["only"] == ["generate"] and report["table"] == []
    assert report["machine"]["cpu_tag"] in reports[0].name and "torch" in report["machine"]["versions"]
    (gen,) = report["benchmarks"]
    assert gen["status"] == "ok" and "--quick" not in gen["command"] and "--results-dir" in gen["command"]

    # The benchmark's own results JSON, found from its printed path: ours vs transformers, same tokens.
    record = json.loads(Path(gen["results"]).read_text())
    assert record["printed"][-1].startswith("ratio transformers/ours (KV cache both, 8 new tokens): ")
    for row in record["figures"]["rows"]:
        assert row["same_tokens"] and row["hf_same_tokens"]
        assert all(
            row[s]["min_ms_per_token"] <= row[s]["ms_per_token"] > 0 for s in ("cache", "no_cache", "hf")
        )
        assert row["hf_ratio"] == row["hf"]["ms_per_token"] / row["cache"]["ms_per_token"]

    # The summary: both generation ratios per length, with a spread, recorded without a target (none set).
    summary = report["summary"]
    assert [r["figure"] for r in summary] == [
        "1x32, vocab 64, 4 new tokens: transformers/ours",
        "1x32, vocab 64, 4 new tokens: no-cache/cache",
        "1x32, vocab 64, 8 new tokens: transformers/ours",
        "1x32, vocab 64, 8 new tokens: no-cache/cache",
    ]
    for r in summary:
        assert r["status"] == "no target" and r["target"] is None
        assert "attention ours sdpa, transformers sdpa" in r["note"]
        lo, hi = r["spread"]
        assert lo <= r["value"] <= hi
    assert "targets: 0 met, 0 missed, 0 not distinguishable, 0 not reported" in printed[-1]
    assert any(line.startswith("generate") and "transformers/ours" in line for line in printed)


def test_missing_and_failing_benchmarks_are_recorded_and_the_suite_goes_on(capsys, monkeypatch, tmp_path):
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "broken_bench.py").write_text(
        "import sys\nprint('starting')\nsys.exit('something went wrong here')\n"
    )
    monkeypatch.syspath_prepend(str(modules))  # the suite looks the module up, its subprocess runs it
    monkeypatch.setenv("PYTHONPATH", str(modules))
    benchmarks = [
        suite.Benchmark(name="absent", module="bench.no_such_benchmark", args=(), quick_args=(), ratios=list),
        suite.Benchmark(name="broken", module="broken_bench", args=(), quick_args=(), ratios=list),
    ]
    code = suite.main(["--quick", "--results-dir", str(tmp_path)], benchmarks=benchmarks)
    printed = capsys.readouterr().out.strip().splitlines()

    assert code == 1
    assert printed[-1].startswith("suite: 2 benchmarks (0 ok, 1 failed, 0 timeout, 1 missing)")
    (report,) = [json.loads(p.read_text()) for p in tmp_path.glob("suite_*.json")]
    absent, failed = report["benchmarks"]
    assert absent["status"] == "missing" and absent["results"] is None
    assert failed["status"] == "failed" and failed["exit_code"] == 1
    assert "something went wrong here" in failed["stderr_tail"] and failed["final_line"] == "starting"
    assert [(r["benchmark"], r["status"]) for r in report["summary"]] == [
        ("absent", "missing"),
        ("broken", "failed"),
    ]


def test_ratio_extraction_from_results_records() -> None:
    startup = {
        "figures": {
            "ratio": 1.1,
            "ratio_min_max": [0.9, 1.3],
            "sides": {"noop": {"median_s": 10.0, "n": 3}, "ours": {"median_s": 11.0, "n": 3}},
        }
    }
    e, *_ = suite.startup_ratios(startup)
    assert (e["status"], e["target"], e["spread"]) == ("not distinguishable", "<= 1.2x", [0.9, 1.3])
    startup["figures"]["ratio_min_max"] = [0.9, 1.15]
    assert suite.startup_ratios(startup)[0]["status"] == "met"

    preprocess = {"figures": {"corpora": {"stdlib": {"repeats": 3}}}}
    tokenize, full = suite.preprocess_ratios(preprocess)
    assert (tokenize["status"], full["status"]) == ("not reported", "not reported")
    stdlib = preprocess["figures"]["corpora"]["stdlib"]
    ours = {"tokens": 100, "runs": [{"wall_s": 0.2}, {"wall_s": 0.25}]}
    limit = {"tokens": 100, "runs": [{"wall_s": 0.5}, {"wall_s": 0.6}]}
    ceiling = {"tokens": 100, "runs": [{"wall_s": 0.3}, {"wall_s": 0.4}]}
    stdlib["tokenize_only"] = {
        "ours": ours,
        "limit": limit,
        "ceiling": ceiling,
        "ratio": 2.5,
        "ceiling_ratio": 1.5,
        "encoder": "tiktoken",
    }
    stdlib["whole_job"] = {"ours": ours, "limit": {**limit, "runs": [{"wall_s": 0.21}]}, "ratio": 0.9}
    tokenize, ceiling_entry, full = suite.preprocess_ratios(preprocess)
    assert (tokenize["status"], tokenize["target"]) == ("met", ">= 2x")
    assert tokenize["spread"] == pytest.approx([2.0, 3.0])
    assert "tiktoken" in tokenize["note"] and ceiling_entry["status"] == "ceiling exceeded"
    assert (full["status"], full["target"]) == ("not distinguishable", ">= 1x")  # 0.84x-1.05x crosses 1x

    loading = {"figures": {"headroom": {"median": 3.0, "min": 2.5, "max": 3.5}}, "table": [], "printed": []}
    (h,) = suite.data_loading_ratios(loading)
    assert (h["value"], h["spread"], h["status"]) == (3.0, [2.5, 3.5], "no target")
    assert (
        suite.data_loading_ratios({"figures": {}, "table": [], "printed": ["ratio x: 0.50x"]})[0]["value"]
        == 0.5
    )


def test_targets_judge_the_spread_and_only_native_training_precisions() -> None:
    bf16 = suite.TARGETS["train_eager_bf16"]  # >= 1.3x with the spread's worse end above 1.2x
    assert bf16.judge(1.35, [1.25, 1.4]) == "met"
    assert bf16.judge(1.35, [1.15, 1.4]) == "not distinguishable"
    assert bf16.judge(1.25, [1.2, 1.31]) == "not distinguishable"
    assert bf16.judge(1.25, [1.2, 1.29]) == "missed"
    assert suite.TARGETS["startup"].judge(1.1, None) == "met"

    def precision(native: bool, ratio: float) -> dict:
        side = {"median_tps": 1.0, "min_tps": 1.0, "max_tps": 1.0, "mfu": 0.5, "mfu_achievable": 0.7}
        peak = {"best_gflops": 100.0, "achievable_gflops": 70.0}
        return {"native": native, "ratio": ratio, "sides": {"ours": side, "hf": side}, "peak": peak}

    record = {
        "figures": {"args": {}, "precisions": {"fp32": precision(True, 1.0), "bf16": precision(False, 1.0)}}
    }
    rows = {r["figure"]: (r["target"], r["status"]) for r in suite.train_ratios(record)}
    assert rows["fp32 eager: ours/hf tok/s"] == (">= 1.3x", "missed")
    assert rows["fp32 eager: MFU of the large-matmul peak"] == (">= 75%", "missed")
    assert rows["fp32 eager: MFU of the achievable peak"] == (None, "no target")
    assert rows["bf16 eager: ours/hf tok/s"] == (None, "no target")  # emulated here: recorded only
    record["figures"]["precisions"]["bf16"]["native"] = True
    rows = {r["figure"]: (r["target"], r["status"]) for r in suite.train_ratios(record)}
    assert rows["bf16 eager: ours/hf tok/s"] == (">= 1.3x, spread >= 1.2x", "missed")
    assert rows["bf16 eager: MFU of the achievable peak"] == (">= 60%", "met")
    assert rows["bf16 eager: MFU of the large-matmul peak"] == (None, "no target")

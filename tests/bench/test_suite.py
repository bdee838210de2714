"""bench/suite.py at toy sizes: one real benchmark (generate, --quick) and the report; a missing and a failing
benchmark are recorded as such and the suite goes on. No timing assertions."""

from __future__ import annotations

import json
from pathlib import Path

from .loader import load_script


def test_quick_suite_runs_generate_and_writes_one_report(capsys, monkeypatch, tmp_path) -> None:
    suite = load_script("suite", monkeypatch)
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

    # The summary: both generation ratios per length, judged against their targets, with a spread.
    summary = report["summary"]
    assert [r["figure"] for r in summary] == [
        "4 new tokens: transformers/ours",
        "4 new tokens: no-cache/cache",
        "8 new tokens: transformers/ours",
        "8 new tokens: no-cache/cache",
    ]
    for r in summary:
        assert r["status"] in ("met", "missed") and r["target"] == ">= 1x"
        lo, hi = r["spread"]
        assert lo <= r["value"] <= hi
    assert any(line.startswith("generate") and "transformers/ours" in line for line in printed)


def test_missing_and_failing_benchmarks_are_recorded_and_the_suite_goes_on(capsys, monkeypatch, tmp_path):
    suite = load_script("suite", monkeypatch)
    broken = tmp_path / "broken.py"
    broken.write_text("import sys\nprint('starting')\nsys.exit('something went wrong here')\n")
    benchmarks = [
        suite.Benchmark(
            name="absent", script="bench/no_such_benchmark.py", args=(), quick_args=(), ratios=list
        ),
        suite.Benchmark(name="broken", script=str(broken), args=(), quick_args=(), ratios=list),
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


def test_ratio_extraction_from_results_records(monkeypatch) -> None:
    suite = load_script("suite", monkeypatch)
    startup = {
        "figures": {
            "ratio": 1.1,
            "ratio_min_max": [0.9, 1.3],
            "sides": {"noop": {"median_s": 10.0, "n": 3}, "ours": {"median_s": 11.0, "n": 3}},
        }
    }
    e, *_ = suite.startup_ratios(startup)
    assert (e["status"], e["target"], e["spread"]) == ("met", "<= 1.2x", [0.9, 1.3])

    preprocess = {"figures": {"corpora": {"stdlib": {"ratio": 0.7, "repeats": 3}}}}
    tokenize, full = suite.preprocess_ratios(preprocess)
    assert (tokenize["status"], full["status"], full["value"]) == ("not reported", "missed", 0.7)
    stdlib = preprocess["figures"]["corpora"]["stdlib"]
    stdlib["tokenize_only_ratio"] = 0.95
    runs = {"ours": {"tokens": 100, "runs": [{"wall_s": 1.0}, {"wall_s": 2.0}]}}
    stdlib["tokenize_only"] = {**runs, "limit": {"tokens": 100, "runs": [{"wall_s": 0.5}, {"wall_s": 1.0}]}}
    tokenize, full = suite.preprocess_ratios(preprocess)
    assert (tokenize["status"], full["status"]) == ("met", "missed")
    assert tokenize["spread"] == [0.25, 1.0] and full["spread"] is None

    loading = {"figures": {"headroom": {"median": 3.0, "min": 2.5, "max": 3.5}}, "table": [], "printed": []}
    (h,) = suite.data_loading_ratios(loading)
    assert (h["value"], h["spread"], h["status"]) == (3.0, [2.5, 3.5], "met")
    assert (
        suite.data_loading_ratios({"figures": {}, "table": [], "printed": ["ratio x: 0.50x"]})[0]["value"]
        == 0.5
    )

"""Smoke test of bench/model_step.py at a toy size: it runs both models and ends with the ratio line."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "model_step.py"


def test_benchmark_runs_and_prints_the_ratio_last(capsys, monkeypatch) -> None:
    spec = importlib.util.spec_from_file_location("model_step", BENCH)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "model_step", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    argv = "--layers 1 --width 32 --heads 2 --ctx 16 --vocab 100 --batch 2 --warmup 1 --steps 2 --rounds 1"
    results = bench.main(argv.split())
    assert set(results) == {"fp32", "bf16"}
    for res in results.values():
        assert res.speedup["hf"] == 1.0 and res.median_tps["ours"] > 0 and res.median_tps["hf"] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"ratio ours/hf \(best precision\): \d+\.\d\dx", last), last

"""bench.fim_quality at toy size, end to end: both rates trained under the deepspeed launcher on the same
samples, judged left to right and by codeparrot-eval infill, the ratio last. No quality assertions: a
six-step model infills nothing."""

from __future__ import annotations

import json

import pytest

from bench import fim_quality

pytestmark = pytest.mark.slow


def test_fim_quality_bench_trains_both_rates_on_the_same_samples(capsys, tmp_path, tiny_data):
    config = {
        "model": {
            "preset": "tiny",
            "overrides": {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 64},
        },
        "data": {"paths": ["unused"], "seq_len": 64},
        "optim": {"lr": 2e-3, "warmup_steps": 1},
        "train": {
            "precision": "fp32",
            "micro_batch": 2,
            "max_steps": 4,
            "log_interval": 1,
            "eval_interval": 2,
            "eval_iters": 1,
            "save_interval": 4,
            "save_dir": "unused",
        },
    }
    (tmp_path / "demo.json").write_text(json.dumps(config))
    args = ["--config", str(tmp_path / "demo.json"), "--data", str(tiny_data), "--problems", "1"]
    path = fim_quality.main(
        [*args, "--per-problem", "1", "--max-new-tokens", "4", "--results-dir", str(tmp_path)]
    )
    record = json.loads(path.read_text())
    runs = record["figures"]["runs"]
    assert [(r["fim_rate"], r["seed"]) for r in runs] == [(0.0, 1234), (0.5, 1234)]
    assert runs[0]["train"]["consumed_samples"] == runs[1]["train"]["consumed_samples"] == 4 * 2 * 2
    assert all(r["infill"]["tasks"] == 2 and r["l2r"]["tokens"] > 0 for r in runs)
    ratio = runs[1]["l2r"]["loss"] / runs[0]["l2r"]["loss"]
    assert [row["ratio"] for row in record["table"]] == [1.0, round(ratio, 4)]
    assert capsys.readouterr().out.strip().splitlines()[-1] == (
        f"left-to-right valid loss, fim_rate 0.5 / fim_rate 0.0: {ratio:.4f}x"
    )

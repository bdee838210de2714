"""training.budget, how `make demo` sizes its training to the machine: the step time it measures, what it
prints for --set, and its refusals."""

from __future__ import annotations

import json

import pytest

from training import budget


def test_the_steps_follow_the_step_time_within_the_bounds():
    assert budget.steps_in(180, 0.1) == int(180 / (0.1 * budget.STEP_OVERHEAD))
    assert budget.steps_in(180, 0.2) == budget.steps_in(180, 0.1) // 2
    assert budget.steps_in(180, 60.0) == budget.MIN_STEPS  # a very slow machine still trains a little
    assert budget.steps_in(180, 1e-6) == budget.MAX_STEPS


def test_it_prints_max_steps_for_the_demo_config_on_real_data(tiny_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps(
            {
                "model": {"preset": "tiny", "overrides": {"n_embd": 64, "n_layer": 2, "n_head": 2}},
                "data": {"paths": [str(tiny_data)], "seq_len": 64},
                "train": {"micro_batch": 2},
            }
        )
    )
    assert budget.main(["--config", str(config), "--seconds", "30"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("train.max_steps=")
    steps = int(out.split("=")[1])
    assert budget.MIN_STEPS <= steps <= budget.MAX_STEPS
    # A tiny model's step takes milliseconds: 30 s hold more than the floor.
    assert steps > budget.MIN_STEPS


def test_a_run_it_cannot_size_is_refused_with_exit_2(tmp_path, capsys):
    code = budget.main(["--set", f"data.paths=[\"{tmp_path / 'none'}\"]", "--seconds", "10"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid run configuration") and "does not exist" in err


@pytest.mark.parametrize("seconds", ["0", "-5", "x"])
def test_seconds_must_be_positive(seconds, capsys):
    with pytest.raises(SystemExit) as e:
        budget.main(["--seconds", seconds])
    assert e.value.code == 2 and "--seconds" in capsys.readouterr().err

"""bench.startup without launching: the order of launches, the figures from them, the step-1 marker against
the log line training.loop writes, and a run config that pretrain_gpt.py accepts. No timing assertions."""

from __future__ import annotations

import argparse
import logging

from bench import startup
from cmdline.logs import setup_logging
from training.config import ConfigError, from_dict
from training.validate import load_ds_config, validate


def test_sides_alternate_after_the_warm_up_and_the_ratio_is_of_medians(monkeypatch, tmp_path) -> None:
    seconds = {"noop": iter([9.0, 10.0, 12.0, 11.0]), "ours": iter([20.0, 11.0, 13.0, 12.0])}
    calls = []

    def fake_launch(args, side, data, tmp, k):
        calls.append((side, k))
        t = next(seconds[side])
        return {"side": side, "seconds": t, "to_exit_s": t + (3 if side == "ours" else 1), "cpu_s": 2 * t}

    monkeypatch.setattr(startup, "launch_side", fake_launch)
    args = startup.parse_args(["--repeats", "3", "--warmup", "1"])
    result = startup.measure(args, tmp_path, tmp_path, lambda line: None)

    assert [s for s, _ in calls] == ["noop", "ours", "noop", "ours", "ours", "noop", "noop", "ours"]
    assert len({k for _, k in calls}) == len(calls)  # a fresh run directory per launch
    assert [x["side"] for x in result["launches"]] == ["noop", "ours", "ours", "noop", "noop", "ours"]
    noop, ours = result["sides"]["noop"], result["sides"]["ours"]
    assert (noop["median_s"], noop["min_s"], noop["max_s"], noop["n"]) == (11.0, 10.0, 12.0, 3)
    assert (ours["median_s"], ours["to_exit"]["median_s"], noop["to_exit"]["median_s"]) == (12.0, 15.0, 12.0)
    assert result["ratio"] == 12.0 / 11.0 and result["cpu_ratio"] == 12.0 / 11.0
    assert result["ratio_to_exit"] == 15.0 / 12.0
    assert result["ratio_min_max"] == [11.0 / 12.0, 13.0 / 10.0]


def test_the_marker_matches_rank_0s_step_1_line_only(capsys) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        setup_logging(rank=0)  # the format pretrain_gpt.py logs in
        loop = logging.getLogger("training.loop")
        for step in (1, 2, 10):
            loop.info("step %d/%d | loss %.4f | lr %.3e", step, 10, 9.0, 1e-4)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    lines = capsys.readouterr().out.splitlines()
    assert [bool(startup.STEP1.search(line)) for line in lines] == [True, False, False]
    assert not startup.STEP1.search(lines[0].replace("[rank 0]", "[rank 1]"))


def test_the_run_config_is_one_step_that_pretrain_gpt_accepts(tmp_path) -> None:
    args = startup.parse_args([])
    cfg = startup.run_config(args, tmp_path / "data", tmp_path / "save")
    run = from_dict(cfg)
    assert run.train.max_steps == 1 and run.train.log_interval == 1 and run.train.precision == "auto"
    try:
        validate(run, load_ds_config(args.ds), args.ds, args.ranks, "cpu")
    except ConfigError as e:  # the shards are built by the benchmark; nothing else may be wrong
        assert len(e.problems) == 1 and "does not exist" in e.problems[0], e.problems


def test_repeats_must_be_positive(capsys) -> None:
    try:
        startup.parse_args(["--repeats", "0"])
    except SystemExit as e:
        assert e.code == 2
    assert "--repeats (0) must be at least 1" in capsys.readouterr().err
    assert isinstance(startup.parse_args(["--noop", "--local_rank=1"]), argparse.Namespace)

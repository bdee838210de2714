"""The shipped 1.5B run configs, accepted for their world sizes, and `pretrain_gpt.py --dry-run`'s plan."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import pretrain_gpt

from .conftest import ROOT


def dry_run(capsys, data, config: str, ds: str, world: int, *extra: str) -> tuple[int, str]:
    argv = [
        "--dry-run", "--world", str(world), "--device", "cuda",
        "--config", str(ROOT / "configs" / config), "--ds_config", str(ROOT / "ds_configs" / ds),
        "--set", f"data.paths={json.dumps([str(data)])}", "model.vocab_size=32768", *extra,
    ]  # fmt: skip
    code = pretrain_gpt.main(argv)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("nodes", [1, 2, 4, 8])
def test_zero2_config_on_n_nodes_of_8_gpus(tiny_data, capsys, monkeypatch, nodes):
    monkeypatch.delenv("RANK", raising=False)
    code, out = dry_run(capsys, tiny_data, "codeparrot_zero2.json", "zero2.json", 8 * nodes)
    assert code == 0, out
    assert f"world: {8 * nodes} ranks = {nodes} node(s) x 8 (cuda)" in out
    assert "model: codeparrot, 1,529,628,800 parameters, 48 layers, n_embd 1600" in out
    assert f"parallelism: 1 pipeline stage(s) x {8 * nodes} data-parallel, ZeRO stage 2" in out
    assert f"micro_batch 8 x grad_accum {8 // nodes} x data-parallel {8 * nodes} = 512 sequences" in out
    assert "524,288 tokens per step" in out and "precision: bf16" in out


def test_pipeline_config_on_4_nodes_of_8_gpus(tiny_data, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    code, out = dry_run(capsys, tiny_data, "codeparrot_pipeline4_zero1.json", "pipeline_zero1.json", 32)
    assert code == 0, out
    assert "parallelism: 4 pipeline stage(s) x 8 data-parallel, ZeRO stage 1" in out
    # DeepSpeed's partition by parameters: the embedding (and the tied head) weigh like about one block.
    assert "stage 0 (ranks 0-7): layers 0-11 = embed .. block 10 (12 layers)" in out, out
    assert "stage 3 (ranks 24-31): layers 38-50 = block 37 .. head (13 layers)" in out, out
    assert "micro_batch 4 x grad_accum 16 x data-parallel 8 = 512 sequences" in out


def test_pipeline_config_with_zero2_is_refused(tiny_data, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    code, out = dry_run(capsys, tiny_data, "codeparrot_pipeline4_zero1.json", "zero2.json", 32)
    assert code == 2
    assert "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1 only" in out


def test_world_that_does_not_divide_the_batch_is_refused(tiny_data, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    code, out = dry_run(capsys, tiny_data, "codeparrot_zero2.json", "zero2.json", 24)
    assert code == 2
    assert (
        "train.global_batch (512) must equal micro_batch (8) x grad_accum (2) x data-parallel size (24)"
        in out
    )


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (("--world", "-4"), "argument --world: -4 is not positive"),
        (("--world", "0"), "argument --world: 0 is not positive"),
        (("--world", "four"), "argument --world: 'four' is not a whole number"),
        (("--ranks-per-node", "0"), "argument --ranks-per-node: 0 is not positive"),
    ],
)
def test_a_world_that_is_not_positive_is_refused_in_one_line(argv, says):
    """Before, --world -4 printed a plan for -4 ranks and --world 0 planned the launcher's world (1)."""
    cmd = [sys.executable, str(ROOT / "pretrain_gpt.py"), "--dry-run", *argv,
           "--ds_config", str(ROOT / "ds_configs" / "zero2_cpu.json")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"pretrain_gpt.py: error: {says}: give 1 or more (see --help)"]

"""Training behaviour: the loss falls on standard-library shards, NaN steps are skipped then abort, every
shipped DeepSpeed config runs, a config with logging writes its metrics and TensorBoard events."""

from __future__ import annotations

import json

import pytest

from .conftest import FAULT_WORKER, ROOT, check, deepspeed_cmd, losses, run, run_config, single_cmd

pytestmark = pytest.mark.slow


def test_loss_falls_on_stdlib_shards(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=60, micro_batch=8, log_interval=5, eval_interval=30)
    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json", "--set", "optim.lr=3e-3"), tmp_path))
    by_step = losses(tmp_path / "ckpt")
    # One logged loss is one batch's (a file of tests next to one of code): judge the last three.
    assert sum(by_step[s] for s in (50, 55, 60)) / 3 < by_step[5] - 0.7, by_step
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    valid = [x["valid_loss"] for x in lines if "valid_loss" in x]
    assert len(valid) == 2 and valid[1] < valid[0]
    assert {"lr", "grad_norm", "tokens_per_s", "tflops_per_device", "memory_gib"} <= set(lines[-1])
    assert "step 60/60 | loss" in result.stdout and "tok/s" in result.stdout
    assert list((tmp_path / "ckpt" / "tensorboard").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "ckpt" / "ds_config.json").read_text())
    assert saved["train_batch_size"] == 16 and saved["zero_optimization"]["stage"] == 2
    resolved = json.loads((tmp_path / "ckpt" / "run_config.json").read_text())["resolved"]
    assert resolved["model"]["vocab_size"] == 600 and resolved["precision"] == "fp32"


def test_nan_loss_is_skipped_then_repeated_nans_abort(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=6)
    check(
        run(
            single_cmd(cfg, "zero2_cpu.json", script=FAULT_WORKER),
            tmp_path,
            faults={"nan_loss_at_steps": [3]},
        )
    )
    lines = [json.loads(x) for x in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert 3 not in {x["step"] for x in lines} and lines[-1]["skipped_steps"] == 1
    assert all(x["loss"] == x["loss"] for x in lines)  # no NaN reached the weights

    (tmp_path / "b").mkdir()
    cfg = run_config(tmp_path / "b", tiny_data, max_steps=10, max_bad_steps=3)
    faults = {"nan_loss_at_steps": [2, 3, 4]}
    result = run(single_cmd(cfg, "zero2_cpu.json", script=FAULT_WORKER), tmp_path, faults=faults)
    assert result.returncode == 3
    assert (
        "3 steps in a row had a non-finite loss (train.max_bad_steps = 3); stopping at step 4"
        in result.stderr
    )


SHIPPED_DS_CONFIGS = sorted(p.name for p in (ROOT / "ds_configs").glob("*.json"))


@pytest.mark.parametrize("ds_config", SHIPPED_DS_CONFIGS)
def test_every_shipped_ds_config_trains(tiny_data, tmp_path, ds_config):
    """Each file of ds_configs/ trains and the loss falls. The GPU files enable bf16 and so run in bf16
    here (precision auto defers to the JSON); zero3_offload.json builds DeepSpeedCPUAdam (about 1.5 min)."""
    stages = 2 if ds_config.startswith("pipeline") else 1
    # Two pipeline stages leave one data-parallel rank: accumulate two micro-batches, so every config
    # trains on the same 4 samples per step.
    cfg = run_config(
        tmp_path,
        tiny_data,
        max_steps=8,
        eval_interval=4,
        save_interval=8,
        precision="auto",
        pipeline_stages=stages,
        grad_accum=stages,
    )
    result = check(run(deepspeed_cmd(cfg, ds_config, "--set", "optim.lr=3e-3"), tmp_path, timeout=600))
    by_step = losses(tmp_path / "ckpt")
    assert sorted(by_step) == list(range(1, 9)), by_step
    assert sum(by_step[s] for s in (6, 7, 8)) / 3 < by_step[1] - 0.25, by_step
    assert (tmp_path / "ckpt" / "latest").read_text().strip() == "global_step8"
    if "bf16" in (ROOT / "ds_configs" / ds_config).read_text():
        assert "precision bf16 (train.precision auto): " in result.stdout


def test_resume_refuses_other_data_unless_forced_and_keeps_last_k(tiny_data, tmp_path, tmp_path_factory):
    cfg = run_config(tmp_path, tiny_data, max_steps=4, save_interval=1, keep_last=2)
    check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("global_step*")) == [
        "global_step3",
        "global_step4",
    ]

    # A changed hyperparameter: refused, naming the setting with both values and nothing else.
    result = run(single_cmd(cfg, "zero2_cpu.json", "--set", "optim.lr=2e-3", "train.seed=7"), tmp_path)
    assert result.returncode == 2, result.stderr
    assert "optim.lr: 0.001 in the checkpoint, 0.002 now" in result.stderr
    assert "train.seed: 1234 in the checkpoint, 7 now" in result.stderr
    assert "the data" not in result.stderr and "the tokenizer" not in result.stderr
    # Settings outside the resume check (intervals, run length) may change.
    cfg5 = run_config(tmp_path, tiny_data, max_steps=5, save_interval=1, keep_last=2, log_interval=2)
    assert "resumed from" in check(run(single_cmd(cfg5, "zero2_cpu.json"), tmp_path)).stdout

    from data_tools.preprocess import PreprocessConfig, preprocess
    from data_tools.sources import SourceConfig

    corpus = tiny_data.parent / "corpus.jsonl"
    other = tmp_path_factory.mktemp("other")
    # Another tokenizer for the same corpus: refused, naming the tokenizer.
    preprocess(
        PreprocessConfig(
            sources=SourceConfig(inputs=(str(corpus),)),
            output=other / "tok500",
            vocab_size=500,
            show_progress=False,
        )
    )
    result = run(single_cmd(run_config(tmp_path, other / "tok500", max_steps=6), "zero2_cpu.json"), tmp_path)
    assert result.returncode == 2 and "was written by a run that differs from this one in:" in result.stderr
    assert "the tokenizer: " in result.stderr
    # Other shards with the same tokenizer (half the corpus): refused, then resumed with --force-resume.
    (other / "half.jsonl").write_text("".join(corpus.read_text().splitlines(keepends=True)[::2]))
    preprocess(
        PreprocessConfig(
            sources=SourceConfig(inputs=(str(other / "half.jsonl"),)),
            output=other / "half",
            tokenizer=tiny_data.parent / "tok",
            show_progress=False,
        )
    )
    cfg = run_config(tmp_path, other / "half", max_steps=6, save_interval=1, keep_last=2)
    result = run(single_cmd(cfg, "zero2_cpu.json"), tmp_path)
    assert result.returncode == 2
    assert "the data: manifest hashes" in result.stderr and "--force-resume" in result.stderr
    assert "the tokenizer" not in result.stderr and "optim." not in result.stderr
    result = check(run(single_cmd(cfg, "zero2_cpu.json", "--force-resume"), tmp_path))
    assert "resumed from" in result.stdout and "step 6/6" in result.stdout


def test_compiled_model_gives_the_eager_losses(tiny_data, tmp_path):
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    check(run(single_cmd(run_config(tmp_path / "eager", tiny_data, max_steps=4), "zero2_cpu.json"), tmp_path))
    cfg = run_config(tmp_path / "compiled", tiny_data, max_steps=4, compile=True)
    result = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path, timeout=600))
    assert "model compiled with torch.compile" in result.stdout
    eager, compiled = losses(tmp_path / "eager" / "ckpt"), losses(tmp_path / "compiled" / "ckpt")
    for step in range(1, 5):
        assert abs(eager[step] - compiled[step]) <= 1e-5 * abs(eager[step]), (step, eager, compiled)


def test_a_save_interrupted_before_latest_moved_is_ignored(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=4, save_interval=2)
    check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    ckpt = tmp_path / "ckpt"
    # A crash while writing step 6: its directory exists, half written; `latest` still names step 4.
    (ckpt / "global_step6").mkdir()
    (ckpt / "global_step6" / "mp_rank_00_model_states.pt").write_bytes(b"\x00" * 100)
    assert (ckpt / "latest").read_text().strip() == "global_step4"
    cfg = run_config(tmp_path, tiny_data, max_steps=6, save_interval=2)
    result = check(run(single_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {ckpt / 'global_step4'} at step 4" in result.stdout
    assert (ckpt / "latest").read_text().strip() == "global_step6"
    assert (ckpt / "global_step6" / "client_state.json").exists()

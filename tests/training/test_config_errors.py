"""Every configuration problem is reported before an engine is built, all at once, as the user sees it."""

from __future__ import annotations

import json

import pytest

import pretrain_gpt
from training.config import ConfigError, OptimSection, from_dict, lr_at

from .conftest import ROOT


def errors(capsys, tmp_path, cfg: dict, ds: dict | str, world: int = 2, monkeypatch=None) -> str:
    """The problems a launch of `world` ranks reports (pretrain_gpt.preflight runs on every rank before
    torch.distributed starts; rank 0 prints them)."""
    (tmp_path / "run.json").write_text(json.dumps(cfg))
    if isinstance(ds, dict):
        (tmp_path / "ds.json").write_text(json.dumps(ds))
        ds_path = str(tmp_path / "ds.json")
    else:
        ds_path = str(ROOT / "ds_configs" / ds)
    args = pretrain_gpt.parse_args(["--config", str(tmp_path / "run.json"), "--ds_config", ds_path])
    with pytest.raises(ConfigError) as e:
        pretrain_gpt.preflight(args, world, "cpu")
    return str(e.value)


def test_every_problem_at_once(tiny_data, tmp_path, capsys, monkeypatch):
    cfg = {
        "model": {"preset": "tiny", "overrides": {"vocab_size": 100, "n_layer": 2, "n_positions": 64}},
        "data": {"paths": [str(tiny_data), str(tmp_path / "nowhere")], "seq_len": 128},
        "train": {
            "micro_batch": 4,
            "global_batch": 10,
            "grad_accum": 1,
            "pipeline_stages": 4,
            "precision": "fp16",
        },
    }
    ds = {
        "zero_optimization": {"stage": 2},
        "train_micro_batch_size_per_gpu": 8,
        "bf16": {"enabled": True},
        "optimizer": {"type": "Adam"},
    }
    err = errors(capsys, tmp_path, cfg, ds, world=4, monkeypatch=monkeypatch)
    assert "DeepSpeed pipeline parallelism supports ZeRO stage 0 or 1 only: train.pipeline_stages is 4" in err
    assert f"data path '{tmp_path / 'nowhere'}' does not exist" in err
    assert "the data's tokenizer has 600 ids but model.vocab_size is 100" in err
    assert "data.seq_len (128) exceeds the model context n_positions (64)" in err
    assert "train.pipeline_stages (4) exceeds the model's n_layer (2)" in err
    assert (
        "train.global_batch (10) must equal micro_batch (4) x grad_accum (1) x data-parallel size (1) = 4"
        in err
    )
    assert "train.precision fp16 is not supported on CPU" in err
    assert "sets train_micro_batch_size_per_gpu=8 but the run config gives 4" in err
    assert "sets bf16.enabled=True but train.precision is 'fp16'" in err
    assert "has an 'optimizer' section, but the run config owns the optimizer" in err
    assert "Traceback" not in err


def test_shipped_pipeline_config_refuses_zero2(tiny_data, tmp_path, capsys, monkeypatch):
    cfg = {
        "data": {"paths": [str(tiny_data)], "seq_len": 32},
        "train": {"pipeline_stages": 2, "precision": "fp32"},
    }
    err = errors(capsys, tmp_path, cfg, "zero2_cpu.json", world=2, monkeypatch=monkeypatch)
    assert "supports ZeRO stage 0 or 1 only" in err and "ds_configs/pipeline_zero1.json" in err


def test_unknown_keys_list_the_valid_ones(tmp_path, capsys, monkeypatch):
    (tmp_path / "run.json").write_text(json.dumps({"train": {"max_step": 3}, "optimizer": {}}))
    monkeypatch.setenv("RANK", "0")
    assert pretrain_gpt.main(["--config", str(tmp_path / "run.json")]) == 2
    err = capsys.readouterr().err
    assert "unknown key(s) ['max_step'] in 'train'; valid keys:" in err and "'max_steps'" in err
    assert "unknown section 'optimizer'; valid sections: ['data', 'model', 'optim', 'train']" in err
    assert pretrain_gpt.main(["--set", "lr=3"]) == 2
    assert "must look like section.key=value" in capsys.readouterr().err


def test_contradiction_in_precision_and_clipping(tiny_data, tmp_path, capsys, monkeypatch):
    cfg = {"data": {"paths": [str(tiny_data)], "seq_len": 32}, "train": {"precision": "fp32"}}
    err = errors(capsys, tmp_path, cfg, {"bf16": {"enabled": True}, "gradient_clipping": 0.5}, 1, monkeypatch)
    assert "bf16.enabled=True but train.precision is 'fp32'" in err
    assert "gradient_clipping=0.5 but the run config gives 1.0 (optim.grad_clip)" in err


def test_learning_rate_schedule():
    o = OptimSection(lr=1.0, min_lr=0.1, warmup_steps=10)
    assert lr_at(0, o, 110) == pytest.approx(0.1) and lr_at(9, o, 110) == pytest.approx(1.0)
    assert lr_at(60, o, 110) == pytest.approx(0.55)  # half-way through the cosine
    assert lr_at(110, o, 110) == pytest.approx(0.1) and lr_at(500, o, 110) == pytest.approx(0.1)


def test_from_dict_round_trip():
    cfg = from_dict({"optim": {"lr": 3e-4}, "train": {"max_steps": 7}})
    assert from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="must be an object"):
        from_dict({"train": 3})


def test_run_length_from_max_steps_or_max_tokens():
    from training.validate import total_steps

    run = from_dict({"data": {"seq_len": 128}, "train": {"max_steps": 100, "max_tokens": 128 * 16 * 10}})
    assert total_steps(run, global_batch=16) == 10  # whichever comes first
    run = from_dict({"data": {"seq_len": 128}, "train": {"max_steps": None, "max_tokens": 128 * 16 * 10 + 1}})
    assert total_steps(run, global_batch=16) == 11
    run = from_dict({"train": {"max_steps": 7}})
    assert total_steps(run, global_batch=16) == 7


def test_every_field_is_checked_for_type_and_range_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    overrides = [
        "train.micro_batch=abc",
        "train.log_interval=0",
        "optim.lr=0",
        "optim.beta2=1.5",
        "data.paths=runs/demo/data",
        "data.weights=[1, -2]",
        "train.precision=bf15",
        "train.max_steps=null",
    ]
    assert pretrain_gpt.main(["--set", *overrides]) == 2
    err = capsys.readouterr().err
    for expected in (
        "train.micro_batch ('abc') must be an integer",
        "train.log_interval (0) must be >= 1",
        "optim.lr (0) must be > 0",
        "optim.beta2 (1.5) must be < 1",
        "data.paths ('runs/demo/data') must be a list of strings, e.g. [\"runs/demo/data\"]",
        "data.weights ([1, -2]): every entry must be > 0",
        "train.precision ('bf15') must be one of 'auto', 'fp32', 'bf16', 'fp16'",
    ):
        assert expected in err, (expected, err)
    assert "Traceback" not in err
    assert pretrain_gpt.main(["--set", "train.micro_batch=-2"]) == 2
    assert "train.micro_batch (-2) must be >= 1" in capsys.readouterr().err
    assert pretrain_gpt.main(["--set", "train.max_steps=null"]) == 2
    assert "set train.max_steps or train.max_tokens" in capsys.readouterr().err


def test_ds_config_that_is_not_an_object(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    (tmp_path / "ds.json").write_text("[1, 2]")
    assert pretrain_gpt.main(["--ds_config", str(tmp_path / "ds.json")]) == 2
    err = capsys.readouterr().err
    assert f"--ds_config {tmp_path / 'ds.json'}: must hold a JSON object" in err and "Traceback" not in err


def test_resume_differences_name_each_setting():
    from training.checkpoint import resume_differences

    run = from_dict({"optim": {"lr": 1e-3}})
    saved = {"resume_config": run.resume_values("bf16"), "tokenizer": "t1", "data_manifest": "d1"}
    now = {
        "resume_config": from_dict({"optim": {"lr": 2e-3}, "train": {"log_interval": 1}}).resume_values(
            "fp32"
        ),
        "tokenizer": "t1",
        "data_manifest": "d2",
        "data_paths": ["new"],
    }
    diffs = resume_differences(saved, now)
    assert diffs[0] == "optim.lr: 0.001 in the checkpoint, 0.002 now"
    assert diffs[1] == 'train.precision: "bf16" in the checkpoint, "fp32" now'
    assert diffs[2].startswith("the data: manifest hashes d1") and len(diffs) == 3  # log_interval may change

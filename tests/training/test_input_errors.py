"""Bad input to pretrain_gpt.py, run as a user runs it, ends in one line (what, where, the fix) with exit
status 2 and no traceback; a rank killed mid-run is named by the rank that survives it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import FAULT_WORKER, ROOT, deepspeed_cmd, env, run, run_config


def _one_error(tmp_path, *args: str) -> str:
    """stderr of a 1-rank `python pretrain_gpt.py ARGS`, asserting exit 2, one error, no traceback."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "pretrain_gpt.py"), *args],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 2, out[-3000:]
    assert out.count("error: ") == 1 and "Traceback" not in out, out[-3000:]
    return result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]", "must hold a JSON object ({...}), got list [1, 2]"),
        ('{"train": {"max_steps": 3, "max_steps": 4}}', "key 'max_steps' appears twice in one object (3, "),
        ('{"train": 3', "not valid JSON"),
    ],
    ids=["a list", "a duplicate key", "cut short"],
)
def test_a_run_config_that_is_not_one_json_object(tmp_path, text, expected):
    (tmp_path / "run.json").write_text(text)
    err = _one_error(tmp_path, "--config", str(tmp_path / "run.json"))
    assert f"--config {tmp_path / 'run.json'}: {expected}" in err


@pytest.mark.parametrize("stage", [7, "two", True, None])
def test_an_impossible_zero_stage(tiny_data, tmp_path, stage):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": stage}}))
    cfg = run_config(tmp_path, tiny_data, max_steps=1)
    err = _one_error(tmp_path, "--config", str(cfg), "--ds_config", str(ds))
    assert f"{ds} sets zero_optimization.stage {stage!r}: ZeRO stages are 0, 1, 2 or 3 (an integer)" in err


def test_an_empty_save_dir(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=1, save_dir="")
    err = _one_error(tmp_path, "--config", str(cfg))
    assert "train.save_dir ('') is empty: give the directory for this run's checkpoints and logs" in err
    assert not (ROOT / ".run.lock").exists()


@pytest.mark.slow
def test_the_survivor_names_the_rank_that_was_killed(tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=8, save_interval=2, eval_interval=0)
    result = run(
        deepspeed_cmd(cfg, "zero2_cpu.json", script=FAULT_WORKER),
        tmp_path,
        timeout=240,
        faults={"sigkill_at_step": [1, 4]},
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0
    line = next((x for x in out.splitlines() if x.startswith("error: ")), out[-3000:])
    assert "error: rank 1 (pid " in line and "stopped (killed or crashed) during step 4" in line, line
    assert f"the last complete checkpoint is {tmp_path / 'ckpt' / 'global_step2'}" in line
    assert "rank 0 lost its connection to it" in line
    assert "[rank0]: Traceback" not in out


def test_a_fim_run_on_data_whose_tokenizer_lacks_the_sentinels(tiny_data, tmp_path):
    """Shards made with a tokenizer of before the sentinels (only the end-of-document token): a run with
    data.fim_rate > 0 is refused in one line naming the dataset, the tokenizer and the two ways out; the
    same data trains left to right with data.fim_rate=0 (the refusal is about FIM, not the data)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from data_tools.parallel import CleanConfig
    from data_tools.preprocess import PreprocessConfig, preprocess
    from data_tools.sources import SourceConfig

    corpus = tiny_data.parent / "corpus.jsonl"
    old = Tokenizer(models.BPE())
    old.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    old.decoder = decoders.ByteLevel()
    texts = [json.loads(line)["content"] for line in corpus.read_text().splitlines()]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    old.train_from_iterator(texts, trainer)
    (tmp_path / "tok").mkdir()
    old.save(str(tmp_path / "tok" / "tokenizer.json"))
    data = tmp_path / "data"
    preprocess(
        PreprocessConfig(
            sources=SourceConfig(inputs=(str(corpus),)),
            output=data,
            tokenizer=tmp_path / "tok",
            clean=CleanConfig.tokenize_only(0.1),
            tokenize_only=True,
            show_progress=False,
        )
    )
    cfg = run_config(tmp_path, data, max_steps=1)
    err = _one_error(tmp_path, "--config", str(cfg), "--set", "data.fim_rate=0.5")
    assert (
        f"data.fim_rate > 0 but {data} was tokenized with {tmp_path / 'tok'}: the tokenizer has no "
        "<fim_prefix>, <fim_middle>, <fim_suffix>, <fim_pad> token, which fill-in-the-middle needs. Train a "
        "tokenizer with codeparrot-train-tokenizer (it reserves them) and run codeparrot-preprocess again, "
        "or set data.fim_rate=0 to train left to right only." in err
    ), err
    ok = subprocess.run(
        [sys.executable, str(ROOT / "pretrain_gpt.py"), "--config", str(cfg), "--set", "data.fim_rate=0"],
        cwd=ROOT,
        env=env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ok.returncode == 0, ok.stderr[-3000:]

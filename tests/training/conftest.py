"""Tiny shards and helpers to run pretrain_gpt.py through the real `deepspeed` launcher on CPU ranks (the
command line and environment of bench.launcher, which the benchmarks launch with too)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.launcher import deepspeed_env, pretrain_command
from data_tools.parallel import CleanConfig
from data_tools.preprocess import PreprocessConfig, preprocess
from data_tools.sources import Problems, SourceConfig, iter_documents
from data_tools.train_tokenizer import train
from training.run_files import METRICS

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "pretrain_gpt.py"
FAULT_WORKER = Path(__file__).with_name("fault_worker.py")  # pretrain_gpt.py with injected faults


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Shards of about 120 standard-library files with a 600-id tokenizer (train and valid splits)."""
    root = tmp_path_factory.mktemp("tiny_data")
    docs = [d.text for d in iter_documents(SourceConfig(), Problems())][::15][:120]
    train(docs, root / "tok", vocab_size=600, show_progress=False)
    with open(root / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"content": d}) + "\n")
    cfg = PreprocessConfig(
        sources=SourceConfig(inputs=(str(root / "corpus.jsonl"),)),
        output=root / "data",
        tokenizer=root / "tok",
        clean=CleanConfig(valid_ratio=0.1),
        show_progress=False,
    )
    preprocess(cfg)
    return root / "data"


def run_config(tmp_path: Path, data: Path, **train) -> Path:
    """A tiny fp32 run without dropout (so ranks and modes agree), written to tmp_path/run.json."""
    cfg = {
        "model": {"preset": "tiny", "overrides": {"embd_pdrop": 0.0, "attn_pdrop": 0.0, "resid_pdrop": 0.0}},
        "data": {"paths": [str(data)], "seq_len": 32},
        "optim": {"lr": 1e-3, "warmup_steps": 2},
        "train": {
            "micro_batch": 2,
            "max_steps": 10,
            "precision": "fp32",
            "log_interval": 1,
            "eval_interval": 5,
            "eval_iters": 2,
            "save_interval": 5,
            "save_dir": str(tmp_path / "ckpt"),
            **train,
        },
    }
    path = tmp_path / "run.json"
    path.write_text(json.dumps(cfg))
    return path


def env(tmp_path: Path, faults: dict | None = None) -> dict[str, str]:
    """bench.launcher's: one thread per rank (2 ranks x 2 threads on 2 cores is up to 10x slower) and
    private extension and compile caches under `tmp_path`, so nothing is shared with other processes on the
    machine. `faults` go to fault_worker.py."""
    return deepspeed_env(tmp_path, FAULTS=json.dumps(faults or {}))


def deepspeed_cmd(
    config: Path,
    ds_config: str,
    *extra: str,
    ranks: int = 2,
    script: Path = ENTRY,
    runner: str = "deepspeed",
    master_port: int | None = None,
) -> list[str]:
    """`runner` is "deepspeed" (DeepSpeed's own command) or "codeparrot-launch" (it, relaying signals);
    `master_port` by default a free one."""
    ds = ROOT / "ds_configs" / ds_config
    launch = dict(ranks=ranks, runner=runner, master_port=master_port)
    return pretrain_command(config, ds, *extra, script=script, **launch)


def single_cmd(config: Path, ds_config: str, *extra: str, script: Path = ENTRY) -> list[str]:
    return [
        sys.executable,
        str(script),
        "--config",
        str(config),
        "--ds_config",
        str(ROOT / "ds_configs" / ds_config),
        *extra,
    ]


def run(
    cmd: list[str], tmp_path: Path, timeout: int = 300, faults: dict | None = None
) -> subprocess.CompletedProcess:
    shm_before = set(glob.glob("/dev/shm/deepspeed_*"))
    try:
        return subprocess.run(
            cmd, cwd=ROOT, env=env(tmp_path, faults), capture_output=True, text=True, timeout=timeout
        )
    finally:
        for leftover in set(glob.glob("/dev/shm/deepspeed_*")) - shm_before:
            os.unlink(leftover)


def losses(save_dir: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (the last line for a step wins: a resumed run rewrites; the
    resume marks, lines with an "event" key, are not steps)."""
    out = {}
    for line in (save_dir / METRICS).read_text().splitlines():
        record = json.loads(line)
        if "event" not in record:
            out[record["step"]] = record["loss"]
    return out


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, (
        f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result

"""SIGTERM / SIGUSR1 to the ranks (as SLURM preempts): finish the step, save, exit 0; the save resumes."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from .conftest import ROOT, check, deepspeed_cmd, env, run, run_config
from .test_resume import rank_processes

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_saves_and_exits_zero(tiny_data, tmp_path, sig):
    cfg = run_config(tmp_path, tiny_data, max_steps=100000, save_interval=100000, eval_interval=0)
    log = open(tmp_path / "launcher.log", "w")  # a file, not a pipe: a full pipe would stall the ranks
    launcher = subprocess.Popen(
        deepspeed_cmd(cfg, "zero2_cpu.json"),
        cwd=ROOT,
        env=env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    for proc in rank_processes(launcher):
        proc.send_signal(sig)
    launcher.wait(timeout=120)
    log.close()
    out = (tmp_path / "launcher.log").read_text()
    assert launcher.returncode == 0, out[-3000:]
    assert f"stop requested (signal {int(sig)})" in out
    tag = (tmp_path / "ckpt" / "latest").read_text().strip()
    step = int(tag.removeprefix("global_step"))
    assert 3 <= step < 100000 and (tmp_path / "ckpt" / tag).is_dir()
    # The saved step resumes.
    cfg2 = run_config(tmp_path, tiny_data, max_steps=step + 2, save_interval=100000, eval_interval=0)
    result = check(run(deepspeed_cmd(cfg2, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {tmp_path / 'ckpt' / tag} at step {step}" in result.stdout

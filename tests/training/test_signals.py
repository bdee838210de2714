"""SIGTERM / SIGUSR1 to the ranks (as SLURM preempts): finish the step, save, exit 0; the save resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from .conftest import ROOT, check, deepspeed_cmd, env, losses, run, run_config
from .test_resume import rank_processes

pytestmark = pytest.mark.slow


STEPS = 40


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory) -> dict[int, float]:
    """The losses of an uninterrupted run of STEPS steps."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    cfg = run_config(tmp, tiny_data, max_steps=STEPS, save_interval=100000, eval_interval=0)
    check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp))
    return losses(tmp / "ckpt")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_signal_saves_and_exits_zero(tiny_data, tmp_path, sig, reference):
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, save_interval=100000, eval_interval=0)
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
    assert 3 <= step < STEPS, "the run must stop early, at the signal"
    assert f"saved at step {step}, exiting" in out
    # The saved step resumes, and the run continues exactly as the uninterrupted one.
    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {tmp_path / 'ckpt' / tag} at step {step}" in result.stdout
    after = losses(tmp_path / "ckpt")
    assert sorted(after) == list(range(1, STEPS + 1))
    assert all(after[s] == reference[s] for s in after), (after, reference)


def test_ctrl_c_to_the_launcher_saves_and_resumes(tiny_data, tmp_path, reference):
    """Ctrl-C in a terminal sends SIGINT to the whole foreground process group: DeepSpeed's runner, its
    per-node launcher and every rank. The ranks finish the step and save; the saved step resumes exactly."""
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, save_interval=100000, eval_interval=0)
    log = open(tmp_path / "launcher.log", "w")
    launcher = subprocess.Popen(
        deepspeed_cmd(cfg, "zero2_cpu.json"),
        cwd=ROOT,
        env=env(tmp_path),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.05)
    ranks = rank_processes(launcher)
    assert len(ranks) == 2
    os.killpg(launcher.pid, signal.SIGINT)
    launcher.wait(timeout=120)
    psutil.wait_procs(ranks, timeout=120)  # the ranks outlive DeepSpeed's runner by the save
    log.close()
    out = (tmp_path / "launcher.log").read_text()
    assert "stop requested (signal" in out and "[rank0]: Traceback" not in out, out[-3000:]
    tag = (tmp_path / "ckpt" / "latest").read_text().strip()
    step = int(tag.removeprefix("global_step"))
    assert 3 <= step < STEPS
    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {tmp_path / 'ckpt' / tag} at step {step}" in result.stdout
    after = losses(tmp_path / "ckpt")
    assert sorted(after) == list(range(1, STEPS + 1))
    assert all(after[s] == reference[s] for s in after), (after, reference)

"""The run lock under real contention: many processes racing for one stale lock, a requeued SLURM job
landing on another node, and a lock that changed hands before its old holder let go."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training.config import ConfigError
from training.run_lock import LOCK, RunLock, stale_reason

from .conftest import ROOT, check, env, run_config, single_cmd

WORKER = Path(__file__).with_name("lock_worker.py")
DEAD_PID = 2**22 + 17  # above any pid_max: a process that is gone


def _wait(paths: list[Path], timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while not all(p.exists() for p in paths):
        assert time.time() < deadline, [p for p in paths if not p.exists()]
        time.sleep(0.005)


def _stale_lock(path: Path, r: int) -> None:
    """A lock of a run on this host whose process is gone; every other round in the older format
    without an owner token."""
    holder = {"host": socket.gethostname(), "pid": DEAD_PID, "started": "earlier"}
    if r % 2:
        holder["token"] = f"deadbeef{r}"
    path.write_text(json.dumps(holder))


def test_twenty_processes_racing_for_a_stale_lock_one_wins_every_round(tmp_path):
    contenders, rounds = 20, 30
    save_dir, rounds_dir = tmp_path / "ckpt", tmp_path / "rounds"
    save_dir.mkdir(), rounds_dir.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "race", str(save_dir), str(rounds_dir), str(i), str(rounds)],
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
        for i in range(contenders)
    ]
    try:
        for r in range(rounds):
            _stale_lock(save_dir / LOCK, r)
            go = rounds_dir / f"go-{r}"
            os.mkfifo(go)
            fd = os.open(go, os.O_RDWR)  # the contenders block reading it until it is closed
            _wait([rounds_dir / f"ready-{r}-{i}" for i in range(contenders)])
            time.sleep(0.05)
            os.close(fd)
            results = [rounds_dir / f"result-{r}-{i}" for i in range(contenders)]
            _wait(results)
            outcomes = [p.read_text() for p in results]
            winners = [o for o in outcomes if o.startswith("won")]
            assert len(winners) == 1, (r, outcomes)
            assert json.loads((save_dir / LOCK).read_text())["pid"] == int(winners[0].split()[1])
            (rounds_dir / f"release-{r}").touch()
            _wait([rounds_dir / f"released-{r}-{i}" for i in range(contenders)])
            assert sorted(p.name for p in save_dir.iterdir()) == [], r  # released, no claim left behind
        for p in procs:
            assert p.wait(timeout=30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_release_and_heartbeat_leave_another_runs_lock_alone(tmp_path):
    first = RunLock(tmp_path)
    first.acquire()
    # The first run is thought gone (its host lost) and another run took the lock over.
    other = {"host": "elsewhere", "pid": 1, "started": "later", "token": "theirs"}
    replacement = tmp_path / "replacement"
    replacement.write_text(json.dumps(other))
    os.replace(replacement, tmp_path / LOCK)
    first.release()
    assert json.loads((tmp_path / LOCK).read_text())["token"] == "theirs"


def test_stale_rule_for_slurm_jobs():
    me = socket.gethostname()
    holder = {"host": "node-b", "pid": 1, "slurm_job_id": "4242", "slurm_restart_count": "0"}
    assert stale_reason(holder, 0.0, me, "4243") is None  # another job on a fresh lock: it runs
    assert "earlier run of this SLURM job 4242 (restart 0, host node-b" in stale_reason(
        holder, 0.0, me, "4242"
    )
    assert stale_reason(holder, 0.0, me, None) is None


@pytest.mark.slow
def test_a_requeued_slurm_job_takes_over_its_own_lock_on_another_node(tiny_data, tmp_path):
    """Rank 0 of job 4242 holds the lock on node other-node (its own UTS namespace) and is SIGKILLed; the
    requeued job starts on this host at once and trains, where another job's run is refused."""
    save_dir = tmp_path / "ckpt"
    holder = subprocess.Popen(
        [
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname other-node && exec "$0" {WORKER} hold {save_dir}',
            sys.executable,
        ],
        env=dict(os.environ, PYTHONPATH=str(ROOT), SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="0"),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        token = holder.stdout.readline().strip()
        lock = json.loads((save_dir / LOCK).read_text())
        assert (lock["host"], lock["slurm_job_id"], lock["token"]) == ("other-node", "4242", token)
        with pytest.raises(ConfigError, match="in use by another run: host other-node, pid .*SLURM job 4242"):
            RunLock(save_dir, environ={"SLURM_JOB_ID": "777"}).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    cfg = run_config(tmp_path, tiny_data, max_steps=2, eval_interval=0)
    started = time.time()
    result = check(
        subprocess.run(
            single_cmd(cfg, "zero2_cpu.json"),
            cwd=ROOT,
            env=dict(env(tmp_path), SLURM_JOB_ID="4242", SLURM_RESTART_COUNT="1"),
            capture_output=True,
            text=True,
            timeout=240,
        )
    )
    assert time.time() - started < 200  # not the 300 s of a foreign host's stale lock
    assert "taking over the run lock" in result.stdout
    assert "earlier run of this SLURM job 4242 (restart 0, host other-node" in result.stdout
    assert "step 2/2" in result.stdout and not (save_dir / LOCK).exists()

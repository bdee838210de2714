"""SIGTERM / SIGUSR1 to the ranks (as SLURM preempts): finish the step, save, exit 0; the save resumes."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import subprocess
import termios
import time

import psutil
import pytest

from launch.ports import free_port
from tests.launch.decoy import alive, decoy

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


def start(cmd: list[str], tmp_path) -> tuple[subprocess.Popen, int]:
    """The launcher as a terminal's foreground job: its own session, with a pseudo-terminal as controlling
    terminal, so that writing Ctrl-C to the terminal makes the kernel send SIGINT to it (as a keyboard
    does; not a kill() from another process). Logs to a file (a full pipe would stall the ranks). Returns
    the process and the terminal's controlling end, once the run has logged 3 steps."""
    terminal, tty = pty.openpty()

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(tty, termios.TIOCSCTTY, 0)

    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=env(tmp_path),
            stdin=tty,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=controlling_terminal,
        )
    os.close(tty)
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
        time.sleep(0.05)
    return launcher, terminal


def ctrl_c(terminal: int) -> None:
    os.write(terminal, b"\x03")


def launch_on(port: int, cfg) -> list[str]:
    return deepspeed_cmd(cfg, "zero2_cpu.json", runner="codeparrot-launch", master_port=port)


@pytest.mark.parametrize(
    "how",
    ["ctrl-c", "sigterm"],
    ids=["Ctrl-C at the terminal", "SIGTERM to the command"],
)
def test_signal_to_the_launch_command_saves_and_resumes(tiny_data, tmp_path, reference, how):
    """codeparrot-launch (the `deepspeed` command, relaying signals): Ctrl-C in a terminal or SIGTERM to
    the command asks every rank to finish its step and save; the command exits 0 with no rank left
    running, and the saved step resumes exactly. (The plain runner exits 143 at once on SIGTERM and
    leaves its ranks training, detached.) Another job's launch on the same host and master port is not
    touched."""
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, save_interval=100000, eval_interval=0)
    port = free_port()
    with decoy(tmp_path, port) as (decoy_launcher, decoy_rank):
        launcher, terminal = start(launch_on(port, cfg), tmp_path)
        ranks = rank_processes(launcher)
        assert len(ranks) == 2
        if how == "ctrl-c":
            ctrl_c(terminal)
        else:
            launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=120)
        assert alive(decoy_rank) and alive(decoy_launcher), "another job's rank on its port was signalled"
    out = (tmp_path / "launcher.log").read_text()
    assert launcher.returncode == 0, out[-3000:]
    assert not [p for p in ranks if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "a rank is left"
    assert "every rank finishes its step, saves a checkpoint and exits" in out
    assert out.count("stop requested (signal 10)") == 1, out[-3000:]  # SIGUSR1, logged by rank 0
    tag = (tmp_path / "ckpt" / "latest").read_text().strip()
    step = int(tag.removeprefix("global_step"))
    assert 3 <= step < STEPS
    if how == "sigterm":
        return  # resuming is the same for both; checked once
    result = check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp_path))
    assert f"resumed from {tmp_path / 'ckpt' / tag} at step {step}" in result.stdout
    after = losses(tmp_path / "ckpt")
    assert sorted(after) == list(range(1, STEPS + 1))
    assert all(after[s] == reference[s] for s in after), (after, reference)


def test_second_ctrl_c_stops_every_rank_at_once_and_nothing_else(tiny_data, tmp_path):
    """Two Ctrl-C at the terminal, 0.3 s apart: every rank of the launch is killed within seconds (exit
    130); a decoy launch of another job with the same master port survives."""
    cfg = run_config(tmp_path, tiny_data, max_steps=100000, save_interval=100000, eval_interval=0)
    port = free_port()
    with decoy(tmp_path, port) as (decoy_launcher, decoy_rank):
        launcher, terminal = start(launch_on(port, cfg), tmp_path)
        ranks = rank_processes(launcher)
        ctrl_c(terminal)
        time.sleep(0.3)
        ctrl_c(terminal)
        started = time.time()
        launcher.wait(timeout=30)
        assert time.time() - started < 10
        gone, still = psutil.wait_procs(ranks, timeout=10)
        assert alive(decoy_rank) and alive(decoy_launcher), "another job's rank on the same port was killed"
    assert launcher.returncode == 130
    assert not still, "a rank is left running"
    assert "SIGINT again: stopping every rank now" in (tmp_path / "launcher.log").read_text()


def test_the_same_stop_delivered_twice_still_saves(tiny_data, tmp_path):
    """`scancel` of a job whose batch script runs codeparrot-launch: SLURM sends SIGTERM to every process
    of the job, and the script's trap forwards another. A duplicate of the stop under way is not a second
    Ctrl-C: the ranks save and the command exits 0 with a checkpoint."""
    cfg = run_config(tmp_path, tiny_data, max_steps=100000, save_interval=100000, eval_interval=0)
    launcher, _ = start(launch_on(free_port(), cfg), tmp_path)
    launcher.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    launcher.send_signal(signal.SIGTERM)
    launcher.wait(timeout=120)
    out = (tmp_path / "launcher.log").read_text()
    assert launcher.returncode == 0, out[-3000:]
    assert "the same stop again, still saving" in out
    tag = (tmp_path / "ckpt" / "latest").read_text().strip()
    assert (tmp_path / "ckpt" / tag / "COMPLETE").exists()

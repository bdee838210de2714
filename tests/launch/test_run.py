"""codeparrot-launch's pieces that need no launcher: the remote ranks' environment file, which processes
are ranks, and the master port. (Signals through the real runner: tests/training/test_signals.py,
tests/cluster.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from launch.ports import choose_master_port, reserved_port
from launch.run import LAUNCH_ID, LaunchConfigError, _is_launcher, write_env_file
from tests.launch.decoy import alive, decoy, wait_gone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_env_file_keeps_the_users_lines_and_adds_what_remote_ranks_need(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.env").write_text("NCCL_IB_HCA=mlx5_0\n\nOMP_NUM_THREADS=4\n")
    env = {
        "DS_ENV_FILE": str(tmp_path / "mine.env"),  # an absolute path, as DeepSpeed's runner allows
        "PATH": "/venv/bin:/usr/bin",
        "OMP_NUM_THREADS": "1",
        "GLOO_SOCKET_IFNAME": "ib0",
        "HOME": "/root",
        "MULTI": "a\nb",
    }
    out = tmp_path / "out"
    out.mkdir()
    lines = write_env_file(env, out).read_text().splitlines()
    assert lines == [
        "NCCL_IB_HCA=mlx5_0",
        "OMP_NUM_THREADS=4",  # the user's own value wins
        "PATH=/venv/bin:/usr/bin",
        "GLOO_SOCKET_IFNAME=ib0",
    ]  # no blank line (DeepSpeed's runner fails on one), nothing it forwards itself, no HOME


def test_only_deepspeeds_per_node_launcher_counts_as_the_parent_of_ranks():
    launch = [
        "/venv/bin/python3",
        "-u",
        "-m",
        "deepspeed.launcher.launch",
        "--node_rank=1",
        "--master_port=5",
    ]
    assert _is_launcher(launch)
    # pdsh and ssh carry the same words in their argument lists; the ranks themselves do not match
    assert not _is_launcher(["/usr/bin/ssh", "-x", "node2", "cd", "/w;", *launch])
    assert not _is_launcher(["pdsh", "-S", "-w", "a,b", *launch])
    assert not _is_launcher(["/venv/bin/python3", "-u", "pretrain_gpt.py", "--local_rank=0"])


def test_the_relay_on_a_host_signals_only_the_ranks_of_its_own_launch(tmp_path):
    """What pdsh runs on each host (`python -m launch.run --signal-ranks SIG ID`): two launches of the same
    master port on one host, ours and another job's; only the rank carrying our launch id is signalled."""
    with decoy(tmp_path, 29611, {LAUNCH_ID: "ours"}) as (_, ours), decoy(tmp_path, 29611) as (_, other):
        with decoy(tmp_path, 29611, {LAUNCH_ID: "theirs"}) as (_, theirs):
            relay = [sys.executable, "-m", "launch.run", "--signal-ranks", str(int(signal.SIGUSR1)), "ours"]
            out = subprocess.run(relay, cwd=ROOT, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert "SIGUSR1 sent to 1 rank(s)" in out.stdout
            assert wait_gone(ours, 10), "our rank was not signalled"
            assert alive(other) and alive(theirs), "another job's rank was signalled"


@pytest.mark.parametrize(
    "value", ["$(touch /tmp/pwned)", "`id`", 'say "hi"', "a\\b", "${HOME}x"], ids=str.strip
)
def test_env_values_the_remote_shell_would_alter_are_refused_with_their_name(tmp_path, value):
    """The runner writes `export KEY="VALUE";` into the command pdsh runs on every host: the remote shell
    would run `$()` and backticks and break on quotes. Refused, naming the variable."""
    (tmp_path / "mine.env").write_text(f"MY_SETTING={value}\n")
    env = {"DS_ENV_FILE": str(tmp_path / "mine.env"), "PATH": "/usr/bin"}
    with pytest.raises(
        LaunchConfigError, match=r"environment variable MY_SETTING for the remote ranks holds"
    ):
        write_env_file(env, tmp_path)


def test_env_values_with_spaces_pass_for_pdsh_but_not_for_mpi(tmp_path):
    """pdsh: the runner double-quotes a value with spaces and the remote shell removes the quotes. Open MPI
    (-x KEY=VALUE, no shell): the quotes would become part of the value."""
    env = {"PATH": "/opt/my env/bin:/usr/bin"}
    assert "PATH=/opt/my env/bin:/usr/bin" in write_env_file(env, tmp_path).read_text()
    with pytest.raises(LaunchConfigError, match="inside double quotes, which become part of the value"):
        write_env_file(env, tmp_path, launcher="openmpi")


def test_a_bad_env_value_stops_the_launch_with_one_line(tmp_path):
    (tmp_path / "hosts").write_text("localhost slots=1\n")
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "eth0$(reboot)", "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-m", "launch.run", "--hostfile", str(tmp_path / "hosts")]
    cmd += ["--master_port", "29612", "x.py"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith("codeparrot-launch: error: environment variable GLOO_SOCKET_IFNAME")


def test_one_master_port_rule():
    """Reserved ports win over probing; a probed port is free here."""
    assert reserved_port({"SLURM_STEP_RESV_PORTS": "12011-12013"}) == 12011
    assert reserved_port({"SLURM_STEP_RESV_PORTS": "12020,12031"}) == 12020
    assert reserved_port({}) is None
    import socket

    port = choose_master_port()
    with socket.socket() as s:
        s.bind(("", port))  # nothing listens there


def test_the_port_command_reads_the_hostfile(tmp_path):
    """`python -m launch.ports --hostfile H`, as launch/multi_node.sh runs it: a hostfile of this machine
    only is probed here."""
    (tmp_path / "hosts").write_text("localhost slots=2\n")
    cmd = [sys.executable, "-m", "launch.ports", "--hostfile", str(tmp_path / "hosts")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().isdigit(), out.stderr
    (tmp_path / "bad").write_text("node1 slots=x\n")
    cmd[-1] = str(tmp_path / "bad")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: hostfile"), out.stderr


def test_the_slurm_job_reaches_remote_ranks_for_the_run_lock(tmp_path):
    """On the hostfile path rank 0 is started over ssh too: the job id must travel in .deepspeed_env for
    the run lock to know its own job after a requeue."""
    env = {"PATH": "/usr/bin", "SLURM_JOB_ID": "4242", "SLURM_RESTART_COUNT": "1", "SLURM_NODEID": "0"}
    lines = write_env_file(env, tmp_path).read_text().splitlines()
    assert "SLURM_JOB_ID=4242" in lines and "SLURM_RESTART_COUNT=1" in lines
    assert not any(line.startswith("SLURM_NODEID") for line in lines)  # per-node values stay per node

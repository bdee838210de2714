"""pretrain_gpt.py across two hosts (network namespaces with their own sshd, see conftest.py), launched the
way users launch it: `codeparrot-launch --hostfile` (the DeepSpeed runner) over pdsh and over Open MPI.
Losses equal the one-host runs'; signals to the launch command end in a checkpoint on every host; a rank
killed on one host ends the job everywhere."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.training.conftest import ENTRY, FAULT_WORKER, ROOT, check, deepspeed_cmd, losses, run, run_config

pytestmark = pytest.mark.cluster

STEPS = 8


def launch_cmd(hosts, tmp_path: Path, cfg: Path, ds: str, *, launcher: str = "pdsh", script: Path = ENTRY):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{h} slots=1\n" for h in hosts.names))
    cmd = [str(ROOT / ".venv" / "bin" / "codeparrot-launch"), "--hostfile", str(hostfile)]
    if launcher == "openmpi":
        include = f"--mca btl_tcp_if_include {hosts.subnet} --mca oob_tcp_if_include {hosts.subnet}"
        cmd += ["--launcher", "openmpi", "--launcher_args", include]
    return cmd + [str(script), "--config", str(cfg), "--ds_config", str(ROOT / "ds_configs" / ds)]


def start(hosts, tmp_path: Path, cmd: list[str], **env: str) -> subprocess.Popen:
    """The launch command inside the first host (its own process group, as a terminal's foreground job);
    output to a file (a full pipe would stall the ranks)."""
    with open(tmp_path / "launch.log", "w") as log:
        return hosts.popen(
            hosts.names[0],
            cmd,
            cwd=ROOT,
            env=hosts.env(TORCH_EXTENSIONS_DIR=str(tmp_path / "torch_ext"), **env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def finish(proc: subprocess.Popen, tmp_path: Path, timeout: float = 240) -> str:
    proc.wait(timeout=timeout)
    return (tmp_path / "launch.log").read_text()


@pytest.fixture(scope="module")
def one_host(tiny_data, tmp_path_factory) -> dict[int, float]:
    """The losses of the same run on one host with 2 ranks (DeepSpeed's runner, no hostfile)."""
    tmp = tmp_path_factory.mktemp("one_host")
    cfg = run_config(tmp, tiny_data, max_steps=STEPS, eval_interval=0)
    check(run(deepspeed_cmd(cfg, "zero2_cpu.json"), tmp))
    return losses(tmp / "ckpt")


@pytest.mark.parametrize("launcher", ["pdsh", "openmpi"])
def test_two_hosts_train_as_one(hosts, tiny_data, tmp_path, one_host, launcher):
    """launch/multi_node.sh: preflight, then codeparrot-launch --hostfile over pdsh or Open MPI (told the
    interface by name for pdsh, by subnet for Open MPI)."""
    cfg = run_config(tmp_path, tiny_data, max_steps=STEPS, eval_interval=0)
    hostfile = hosts.write_hostfile(tmp_path / "hostfile")
    cmd = ["bash", str(ROOT / "launch" / "multi_node.sh"), "--config", str(cfg)]
    cmd += ["--ds_config", str(ROOT / "ds_configs" / "zero2_cpu.json")]
    iface = hosts.subnet if launcher == "openmpi" else hosts.ifname
    env = dict(HOSTFILE=str(hostfile), LAUNCHER=launcher, IFACE=iface, SAVE_DIR=str(tmp_path / "ckpt"))
    if launcher == "openmpi":  # the tests run as root, which mpirun refuses unless told
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    proc = start(hosts, tmp_path, cmd, PYTHON=str(ROOT / ".venv" / "bin" / "python"), **env)
    out = finish(proc, tmp_path)
    assert proc.returncode == 0, out[-4000:]
    assert f"via {'openmpi' if launcher == 'openmpi' else 'deepspeed'}" in out, out[-4000:]
    assert losses(tmp_path / "ckpt") == one_host
    assert not hosts.pids("pretrain_gpt.py"), "a rank is left running"


def test_pipeline_split_across_hosts(hosts, tiny_data, tmp_path):
    """2 pipeline stages, one per host, with ZeRO-1: the losses of the same 2 stages on one host."""
    ref = tmp_path / "one"
    ref.mkdir()
    cfg = run_config(ref, tiny_data, max_steps=STEPS, eval_interval=0, pipeline_stages=2)
    check(run(deepspeed_cmd(cfg, "pipeline_zero1_cpu.json"), ref))
    cfg2 = run_config(tmp_path, tiny_data, max_steps=STEPS, eval_interval=0, pipeline_stages=2)
    proc = start(hosts, tmp_path, launch_cmd(hosts, tmp_path, cfg2, "pipeline_zero1_cpu.json"))
    out = finish(proc, tmp_path)
    assert proc.returncode == 0, out[-4000:]
    assert losses(tmp_path / "ckpt") == losses(ref / "ckpt")


def wait_for_steps(tmp_path: Path, proc: subprocess.Popen, n: int) -> None:
    metrics = tmp_path / "ckpt" / "metrics.jsonl"
    deadline = time.time() + 180
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= n):
        assert proc.poll() is None, (tmp_path / "launch.log").read_text()[-4000:]
        assert time.time() < deadline, "the run did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_signal_to_the_launch_command_saves_on_every_host(hosts, tiny_data, tmp_path, how):
    cfg = run_config(tmp_path, tiny_data, max_steps=10000, save_interval=100000, eval_interval=0)
    proc = start(hosts, tmp_path, launch_cmd(hosts, tmp_path, cfg, "zero2_cpu.json"))
    wait_for_steps(tmp_path, proc, 3)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # a terminal sends Ctrl-C to the foreground process group
    else:
        proc.send_signal(signal.SIGTERM)
    out = finish(proc, tmp_path, timeout=120)
    assert proc.returncode == 0, out[-4000:]
    tag = (tmp_path / "ckpt" / "latest").read_text().strip()
    step = int(tag.removeprefix("global_step"))
    assert f"saved at step {step}, exiting" in out
    assert (tmp_path / "ckpt" / tag / "COMPLETE").exists()
    # Each host was asked (a host's rank may have saved and left already, agreeing with another's request:
    # the stop is agreed by an all-reduce every step, so one signalled rank stops them all).
    for host in hosts.names:
        assert f"{host}: SIGUSR1 sent to" in out, out[-4000:]
    # The ranks are found by this launch's id; the simulated hosts share one process table, so a host's
    # relay may find both ranks (one of a real cluster finds its own): every rank was reached.
    sent = re.findall(r"^\S+: \S+: SIGUSR1 sent to (\d+) rank\(s\)$", out, flags=re.M)
    assert len(sent) == 2 and sum(map(int, sent)) >= 2, out[-4000:]
    assert not hosts.pids("pretrain_gpt.py"), "a rank is left running"


def test_a_rank_killed_on_one_host_ends_the_job_on_every_host(hosts, tiny_data, tmp_path):
    cfg = run_config(tmp_path, tiny_data, max_steps=10000, save_interval=100000, eval_interval=0)
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"sigkill_at_step": [1, 4]}))  # rank 1 is on the second host
    env_file = tmp_path / "ds_env"
    env_file.write_text(f"FAULTS_FILE={faults}\n")
    proc = start(
        hosts,
        tmp_path,
        launch_cmd(hosts, tmp_path, cfg, "zero2_cpu.json", script=FAULT_WORKER),
        DS_ENV_FILE=str(env_file),
    )
    out = finish(proc, tmp_path, timeout=180)
    ended = time.time()
    killed_at = float((tmp_path / "ckpt" / "sigkilled_at").read_text())
    assert proc.returncode != 0, out[-4000:]
    assert ended - killed_at < 60, f"the job took {ended - killed_at:.0f} s to end after the kill"
    assert not hosts.pids(str(FAULT_WORKER)), "a rank is left running"

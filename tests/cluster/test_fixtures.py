"""The simulated clusters work like real ones: names, ssh/pdsh, the DeepSpeed runner across hosts, and
SLURM batch jobs, srun steps, requeue and signals."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.hosts import Hosts, start_hosts
from tests.cluster.slurm import Slurm

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("allreduce_worker.py")
BIN = Path(sys.executable).parent


def test_hosts_have_their_names_and_addresses(hosts: Hosts) -> None:
    resolve = f"import socket; print(socket.gethostname(), *map(socket.gethostbyname, {hosts.names!r}))"
    for host in hosts.names:
        r = hosts.run(host, [sys.executable, "-c", resolve], timeout=10)
        assert r.stdout.split() == [host, *(hosts.addrs[n] for n in hosts.names)], r.stderr
        r = hosts.run(host, ["ip", "-o", "-4", "addr", "show", "dev", hosts.ifname], timeout=10)
        assert f"inet {hosts.addrs[host]}/24" in r.stdout
        # nothing leaves the subnet: no default route
        assert hosts.run(host, ["ip", "route", "show", "default"], timeout=10).stdout == ""


def test_ssh_and_pdsh_reach_every_host(hosts: Hosts) -> None:
    r = hosts.run(
        hosts.names[0],
        ["pdsh", "-w", ",".join(hosts.names), "hostname"],
        timeout=30,
        env=hosts.env(PDSH_RCMD_TYPE="ssh"),
    )
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.splitlines()) == sorted(f"{h}: {h}" for h in hosts.names)


def test_deepspeed_runner_across_hosts(hosts: Hosts, tmp_path: Path) -> None:
    """The real `deepspeed --hostfile` (pdsh): one rank per host, environment through DS_ENV_FILE."""
    hostfile = hosts.write_hostfile(tmp_path / "hostfile")
    env_file = hosts.deepspeed_env_file(tmp_path / "ds_env", PYTHONPATH=str(ROOT))
    master = hosts.names[0]
    argv = [
        str(BIN / "deepspeed"),
        "--hostfile",
        str(hostfile),
        "--master_addr",
        hosts.addrs[master],
        "--master_port",
        "29500",
        str(WORKER),
    ]
    r = hosts.run(master, argv, timeout=120, cwd=tmp_path, env=hosts.env(DS_ENV_FILE=str(env_file)))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # pdsh prefixes each line with the host it came from
    assert f"{hosts.names[0]}: rank 0/2 on {hosts.names[0]}: sum 3" in r.stdout
    assert f"{hosts.names[1]}: rank 1/2 on {hosts.names[1]}: sum 3" in r.stdout
    assert hosts.pids(str(WORKER)) == []


def test_teardown_leaves_nothing(hosts: Hosts) -> None:
    """Namespaces, daemons and the work directory go, also when the body raises (a second pair of hosts
    beside the session's, which `hosts` only makes sure can be made here)."""
    with pytest.raises(RuntimeError, match="body failed"), start_hosts(("cptear1", "cptear2")) as extra:
        assert extra.run("cptear2", ["ssh", "cptear1", "hostname"], timeout=10).stdout == "cptear1\n"
        work, netns, sshd = extra.work_dir, list(extra.netns.values()), extra.pids(str(extra.work_dir))
        assert sshd
        raise RuntimeError("body failed")
    assert not work.exists()
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listing for name in netns)
    assert [pid for pid in sshd if os.path.exists(f"/proc/{pid}")] == []


def batch_script(path: Path, body: str, *directives: str) -> Path:
    path.write_text("#!/bin/bash\n" + "".join(f"#SBATCH {d}\n" for d in directives) + body)
    return path


def test_slurm_runs_one_task_per_node(slurm: Slurm, tmp_path: Path) -> None:
    script = batch_script(tmp_path / "job.sh", "srun hostname\n", "--nodes=2", "--ntasks-per-node=1")
    job = slurm.sbatch(str(script))
    assert slurm.wait(job, timeout=60) == "COMPLETED", slurm.describe(job)
    assert sorted(slurm.output(job).split()) == sorted(slurm.nodes)


def test_slurm_srun_ranks_all_reduce(slurm: Slurm, tmp_path: Path) -> None:
    """srun, one task per rank: rank and world from SLURM_PROCID/SLURM_NTASKS, master the first node."""
    body = (
        'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)\n'
        "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 10000))\n"
        f"srun python {WORKER}\n"
    )
    script = batch_script(tmp_path / "job.sh", body, "--nodes=2", "--ntasks=2", "--ntasks-per-node=1")
    job = slurm.sbatch(str(script))
    assert slurm.wait(job, timeout=120) == "COMPLETED", slurm.describe(job)
    lines = sorted(line for line in slurm.output(job).splitlines() if line.startswith("rank"))
    assert lines == [f"rank {i}/2 on {slurm.nodes[i]}: sum 3" for i in range(2)], slurm.output(job)


def wait_output(slurm: Slurm, job: int, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while text not in (out := slurm.output(job)):
        if time.monotonic() > deadline or slurm.state(job) == "COMPLETED":
            raise AssertionError(f"no {text!r} in the output of job {job}:\n{slurm.describe(job)}")
        time.sleep(0.2)
    return out


def test_slurm_requeue_reruns_the_job(slurm: Slurm, tmp_path: Path) -> None:
    body = 'echo "run ${SLURM_RESTART_COUNT:-0}"\n[ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] || sleep 120\n'
    script = batch_script(tmp_path / "job.sh", body, "--nodes=1", "--open-mode=append")
    job = slurm.sbatch(str(script))
    wait_output(slurm, job, "run 0")
    slurm.scontrol("requeue", str(job))
    assert slurm.wait(job, timeout=90) == "COMPLETED", slurm.describe(job)
    runs = [line for line in slurm.output(job).splitlines() if line.startswith("run ")]
    assert runs == ["run 0", "run 1"], slurm.output(job)
    assert slurm.job(job)["Restarts"] == "1"


CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGUSR1, lambda *_: (print('child got USR1', flush=True), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)
SIGNAL_BODY = f"""\
trap 'echo "shell got USR1"' USR1
python -c "{CHILD}" &
child=$!
wait $child
sleep 1
kill -0 $child 2>/dev/null && echo "child still running" && kill $child
wait $child
"""


@pytest.mark.parametrize(
    "how, expected",
    [
        ("--batch", ["ready", "shell got USR1", "child still running"]),
        ("--full", ["ready", "child got USR1", "shell got USR1"]),
    ],
)
def test_scancel_signal_reaches_the_batch_script(
    slurm: Slurm, tmp_path: Path, how: str, expected: list[str]
) -> None:
    """--batch signals the batch shell only; --full the shell and its children. (Without either, scancel
    --signal reaches only srun steps, not the script.)"""
    script = batch_script(tmp_path / "job.sh", SIGNAL_BODY, "--nodes=1")
    job = slurm.sbatch(str(script))
    wait_output(slurm, job, "ready")
    slurm.scancel("--signal=USR1", how, str(job))
    assert slurm.wait(job, timeout=60) in ("COMPLETED", "FAILED"), slurm.describe(job)
    assert sorted(slurm.output(job).splitlines()) == sorted(expected)


def test_slurm_srun_pmix_mpi4py(slurm: Slurm, tmp_path: Path) -> None:
    """srun --mpi=pmix starts MPI ranks (each node has its own TmpFS, for the PMIx server's files)."""
    code = (
        "from mpi4py import MPI; c = MPI.COMM_WORLD; "
        "print('rank', c.Get_rank(), c.Get_size(), MPI.Get_processor_name(), c.allreduce(c.Get_rank() + 1))"
    )
    script = batch_script(
        tmp_path / "job.sh", f'srun --mpi=pmix python -c "{code}"\n', "--nodes=2", "--ntasks-per-node=1"
    )
    subnet = slurm.hosts.subnet
    job = slurm.sbatch(
        str(script), env=slurm.env(OMPI_MCA_btl_tcp_if_include=subnet, OMPI_MCA_oob_tcp_if_include=subnet)
    )
    assert slurm.wait(job, timeout=60) == "COMPLETED", slurm.describe(job)
    lines = sorted(line for line in slurm.output(job).splitlines() if line.startswith("rank"))
    assert lines == [f"rank {i} 2 {slurm.nodes[i]} 3" for i in range(2)], slurm.output(job)

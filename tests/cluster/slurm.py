"""A SLURM cluster on the simulated hosts: munged, slurmctld on the first host, one slurmd per host.

No accounting (sacct does not work: poll squeue/scontrol), processes tracked by parent pid
(proctrack/linuxproc: a process that daemonizes escapes the job), no task binding. Jobs run as root and take
the submitting environment (PATH with the venv) to every task. Daemons, state and logs live in the hosts'
work directory, and the daemons in the hosts' namespaces, so the hosts' teardown removes them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.cluster.hosts import Hosts

BINARIES = (
    "munged",
    "setpriv",
    "slurmctld",
    "slurmd",
    "sbatch",
    "srun",
    "squeue",
    "sinfo",
    "scontrol",
    "scancel",
)
# Job states after which a job never runs again (a requeued job passes through PENDING instead).
FINISHED = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "OUT_OF_MEMORY",
}


@dataclasses.dataclass
class Slurm:
    hosts: Hosts
    nodes: list[str]  # SLURM node names, the same as the host names
    partition: str
    conf: Path  # slurm.conf: every command here passes it as SLURM_CONF
    log_dir: Path  # job output (slurm-<id>.out) when sbatch runs without cwd; daemon logs
    controller: str  # the host running slurmctld, where client commands run

    def env(self, **extra: str) -> dict[str, str]:
        """The hosts' environment plus SLURM_CONF: what sbatch passes on to the job and its tasks."""
        return self.hosts.env(SLURM_CONF=str(self.conf), **extra)

    def command(
        self, *argv: str, env: dict | None = None, cwd: str | Path | None = None, timeout: float = 30
    ) -> str:
        """Run a SLURM client command on the controller's host; its stdout, or RuntimeError with stderr."""
        env = {**(env if env is not None else self.env()), "SLURM_CONF": str(self.conf)}
        r = self.hosts.run(self.controller, list(argv), timeout=timeout, env=env, cwd=cwd)
        if r.returncode != 0:
            raise RuntimeError(f"`{' '.join(argv)}` failed (exit {r.returncode}): {r.stderr.strip()}")
        return r.stdout

    def sbatch(self, *args: str, env: dict | None = None, cwd: str | Path | None = None) -> int:
        """Submit; the job id. Output goes to cwd/slurm-<id>.out unless the script says otherwise; cwd
        defaults to log_dir."""
        out = self.command(
            "sbatch", "--parsable", *args, env=env, cwd=cwd if cwd is not None else self.log_dir
        )
        return int(out.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict: JobState, Restarts, NodeList, ExitCode, Reason, ..."""
        out = self.command("scontrol", "show", "job", "--oneliner", str(job_id))
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def state(self, job_id: int) -> str:
        return self.job(job_id)["JobState"]

    def wait(self, job_id: int, timeout: float) -> str:
        """Poll until the job has finished for good (a requeued job has not) and return its final state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(job_id)
            if state in FINISHED:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {state} after {timeout} s:\n{self.describe(job_id)}")
            time.sleep(0.25)

    def wait_for(self, job_id: int, states: set[str], timeout: float) -> str:
        """Poll until the job is in one of `states` (e.g. {"RUNNING"}); that state."""
        deadline = time.monotonic() + timeout
        while (state := self.state(job_id)) not in states:
            if state in FINISHED or time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {state}, waited for {states}:\n{self.describe(job_id)}")
            time.sleep(0.25)
        return state

    def output(self, job_id: int) -> str:
        """The job's output file, for jobs submitted without cwd and without their own --output."""
        path = self.log_dir / f"slurm-{job_id}.out"
        return path.read_text() if path.exists() else ""

    def describe(self, job_id: int) -> str:
        """What to print when a job misbehaves: scontrol's view, its output, the daemons' log tails."""
        parts = [self.command("scontrol", "show", "job", str(job_id)), self.output(job_id)]
        for log in sorted(self.log_dir.glob("slurm*.log")):
            parts.append(f"--- {log.name}\n" + "".join(log.read_text().splitlines(True)[-20:]))
        return "\n".join(parts)

    def scontrol(self, *args: str) -> str:
        return self.command("scontrol", *args)

    def scancel(self, *args: str) -> None:
        self.command("scancel", *args)


@contextlib.contextmanager
def start_slurm(hosts: Hosts, partition: str = "cpu") -> Iterator[Slurm]:
    """munged, slurmctld and the slurmds up and every node idle; daemons killed on exit (they live in the
    hosts' namespaces; this also stops them when it exits first)."""
    root = hosts.work_dir / "slurm"
    log_dir = root / "logs"
    log_dir.mkdir(parents=True)
    (root / "tmp").mkdir()
    controller = hosts.names[0]
    munged, socket = _start_munged(hosts, controller, root / "munge", log_dir)
    conf = root / "slurm.conf"
    conf.write_text(slurm_conf(hosts, root, socket, partition))
    # slurmd loads a cgroup plugin whatever ProctrackType says; under cgroup v2 it asks systemd (dbus) for
    # a scope, which a machine without a systemd session cannot give
    (root / "cgroup.conf").write_text("IgnoreSystemdOnFailure=yes\n")
    slurm = Slurm(
        hosts=hosts,
        nodes=list(hosts.names),
        partition=partition,
        conf=conf,
        log_dir=log_dir,
        controller=controller,
    )
    daemons = [munged]
    try:
        daemons.append(_daemon(hosts, controller, ["slurmctld", "-D", "-i", "-f", str(conf)], log_dir))
        for node in hosts.names:
            # TmpFS (used by srun --mpi=pmix) must differ between nodes that share a filesystem: each host
            # binds its own directory at that path in its mount namespace.
            (root / f"tmp.{node}").mkdir()
            (root / f"spool.{node}").mkdir()
            bind = hosts.run(
                node, ["mount", "--bind", str(root / f"tmp.{node}"), str(root / "tmp")], timeout=10
            )
            if bind.returncode != 0:
                raise RuntimeError(f"cannot bind {node}'s TmpFS: {bind.stderr.strip()}")
            daemons.append(_daemon(hosts, node, ["slurmd", "-D", "-f", str(conf), "-N", node], log_dir))
        _wait_idle(slurm, daemons)
        yield slurm
    finally:
        for proc in daemons:
            proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            for proc in daemons:
                proc.wait(timeout=5)


def slurm_conf(hosts: Hosts, root: Path, munge_socket: Path, partition: str) -> str:
    controller = hosts.names[0]
    nodes = "".join(
        f"NodeName={n} NodeAddr={hosts.addrs[n]} CPUs=2 RealMemory=1000 State=UNKNOWN\n" for n in hosts.names
    )
    return f"""\
ClusterName=cpcluster
SlurmctldHost={controller}({hosts.addrs[controller]})
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={munge_socket},cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool.%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.%n.pid
SlurmctldLogFile={root}/logs/slurmctld.log
SlurmdLogFile={root}/logs/slurmd.%n.log
TmpFS={root}/tmp
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
# the main scheduler runs on events and every sched_interval s (default 60): a requeued job becomes
# eligible by time, which is no event
SchedulerParameters=sched_interval=1
MpiDefault=none
# ports srun reserves for a step with --resv-ports (SLURM_STEP_RESV_PORTS): train_srun.sbatch's master port
MpiParams=ports=20100-20199
ReturnToService=2
JobRequeue=1
# SIGTERM to SIGKILL: long enough for a checkpoint save on scancel, requeue or time limit
KillWait=60
UnkillableStepTimeout=120
MessageTimeout=10
SlurmdTimeout=60
SlurmctldTimeout=60
InactiveLimit=0
# finished jobs stay visible to scontrol for an hour (there is no accounting to ask afterwards)
MinJobAge=3600
{nodes}PartitionName={partition} Nodes={",".join(hosts.names)} Default=YES MaxTime=INFINITE State=UP
"""


def _start_munged(hosts: Hosts, host: str, directory: Path, log_dir: Path) -> tuple[subprocess.Popen, Path]:
    """munged as user munge with its own key and socket (not /run/munge: a second cluster on the machine
    has its own); it insists that its files belong to its user and that nobody else can write there."""
    munge = pwd.getpwnam("munge")
    directory.mkdir()
    directory.chmod(0o711)  # clients must reach the socket; only munge may list or write
    key = directory / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    for path in (directory, key):
        os.chown(path, munge.pw_uid, munge.pw_gid)
    socket = directory / "munge.socket"
    setpriv = ["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--clear-groups"]
    argv = [*setpriv, "munged", "--foreground", f"--socket={socket}", f"--key-file={key}"]
    argv += [f"--pid-file={directory}/munged.pid", f"--seed-file={directory}/munged.seed"]
    proc = _daemon(hosts, host, [*argv, f"--log-file={directory}/munged.log"], log_dir, name="munged")
    deadline = time.monotonic() + 10
    while not socket.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"munged did not start: {(log_dir / f'munged.{host}.stderr').read_text()}")
        time.sleep(0.05)
    return proc, socket


def _daemon(hosts: Hosts, host: str, argv: list[str], log_dir: Path, name: str = "") -> subprocess.Popen:
    with open(log_dir / f"{name or argv[0]}.{host}.stderr", "wb") as err:
        return hosts.popen(host, argv, stdout=subprocess.DEVNULL, stderr=err)


def _wait_idle(slurm: Slurm, daemons: list[subprocess.Popen], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = slurm.hosts.run(
            slurm.controller, ["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10, env=slurm.env()
        )
        states = dict(line.split() for line in r.stdout.splitlines() if line.strip())
        if r.returncode == 0 and all(states.get(n) == "idle" for n in slurm.nodes):
            return
        dead = [" ".join(p.args[-4:]) for p in daemons if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(slurm.log_dir.iterdir()))
            raise RuntimeError(
                f"SLURM nodes not idle ({states or r.stderr.strip()}; exited: {dead}):\n{logs}"
            )
        time.sleep(0.2)
